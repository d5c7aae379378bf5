"""`llmsim serve`: the HTTP server in front of the engine.

- `runner`: gevent's WSGI server tuned for streaming, worker processes (`supervisor`), graceful
  shutdown; `http_hygiene`, `fastio`, `arrival`: what it refuses, its cheaper I/O steps and the
  requests' arrival times;
- `app`: the Flask routes of every API; `fastpath` serves the generating ones without Flask's
  per-request machinery; `auth` checks API keys in front of the API routes;
- `pipeline`: one generating request from body to reply (api mode; `engine_respond` for
  `--engine vllm`), streamed by the stream loop itself through `takeover`; `offload` keeps heavy
  steps off the event loop;
- `state`, `config`: a worker's engine, capacity, limits and faults, built from the settings;
  `live_config`: `/llmsim/config`; `metrics`: `/metrics`; `peer_logs`: `/llmsim/requests/{id}`
  across workers; `accounting`: each failure counted once.
"""
