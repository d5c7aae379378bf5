"""The Flask app: routes, request parsing and error rendering; timing comes from the engine."""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

import gevent
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from llmsim import __version__
from llmsim.api import errors
from llmsim.api.errors import ApiError
from llmsim.api.openai_chat import parse_chat_request, render_completion, stream_events
from llmsim.api.openai_models import model_object, models_list
from llmsim.engine.simulator import Engine
from llmsim.server.sse import paced
from llmsim.settings import Settings

log = logging.getLogger("llmsim.server")

START_KEY = "llmsim.start"  # environ key: when the request was read (monotonic seconds)


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None):
    return Response(
        json.dumps(payload), status=status, headers=headers, mimetype="application/json"
    )


def _error_response(err: ApiError) -> Response:
    return Response(
        err.json_bytes(), status=err.status, headers=err.headers, mimetype="application/json"
    )


def _read_json() -> Any:
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid_json() from None


def create_app(settings: Settings, engine: Engine | None = None) -> Flask:
    """Build the simulator's WSGI app. Usable without a server (app.test_client())."""
    app = Flask("llmsim")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    engine = engine or Engine(settings)
    app.extensions["llmsim.engine"] = engine
    catalogue = list(dict.fromkeys(settings.models))
    known = set(catalogue)
    fingerprint = engine.system_fingerprint

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        start = request.environ.get(START_KEY) or time.monotonic()
        req, opts = parse_chat_request(_read_json())
        if settings.strict_models and req.model not in known:
            raise errors.model_not_found(req.model)
        reply = engine.plan(req)
        headers = {
            "x-request-id": "req_" + secrets.token_hex(12),
            "x-llmsim-ttft-ms": f"{reply.ttft_s * 1000:.3f}",
            "x-llmsim-tbt-ms": f"{reply.tbt_s * 1000:.3f}",
            "openai-model": reply.model,
        }
        if opts.stream:
            headers["Cache-Control"] = "no-cache"
            headers["X-Accel-Buffering"] = "no"
            body = paced(start, stream_events(reply, fingerprint, opts.include_usage), reply.due_s)
            return Response(body, headers=headers, mimetype="text/event-stream")
        delay = start + reply.duration_s - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        return _json_response(render_completion(reply, fingerprint), headers=headers)

    @app.get("/v1/models")
    def list_models() -> Response:
        return _json_response(models_list(catalogue))

    @app.get("/v1/models/<path:model_id>")
    def get_model(model_id: str) -> Response:
        if settings.strict_models and model_id not in known:
            raise errors.model_not_found(model_id)
        return _json_response(model_object(model_id))

    @app.get("/health")
    def health() -> Response:
        return _json_response({"status": "ok", "version": __version__})

    @app.errorhandler(ApiError)
    def on_api_error(err: ApiError) -> Response:
        return _error_response(err)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        if isinstance(exc, NotFound):
            return _error_response(errors.not_found_url(request.method, request.path))
        if isinstance(exc, MethodNotAllowed):
            resp = _error_response(errors.method_not_allowed(request.method, request.path))
            resp.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return resp
        if isinstance(exc, RequestEntityTooLarge):
            return _error_response(errors.body_too_large(settings.max_body_bytes))
        return _error_response(ApiError(exc.code or 400, exc.description or exc.name))

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(errors.server_error())

    return app
