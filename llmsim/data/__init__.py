"""Data files shipped in the package, found with importlib.resources: words.txt (the words
generated text is made of) and grafana-dashboard.json (a dashboard for /metrics)."""
