"""Record, calibrate, replay: make the simulator behave like a given provider.

- `proxy`: `llmsim record`, a transparent recording proxy (one JSON line per request);
- `recording`: that line format, written by the proxy and by `llmsim bench`, read back;
- `calibrate`: fits a profile per model from recordings; `profile_file`: the profile YAML;
- `replay`: serves recorded replies to requests that match them.
"""
