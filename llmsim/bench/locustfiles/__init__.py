"""Files bench hands to Locust with `-f`; Locust imports them by path, not as this package."""
