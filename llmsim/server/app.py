"""The Flask app: routes and error rendering. Generating routes go through the pipeline."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from llmsim import __version__, gcpolicy
from llmsim.api import anthropic_messages, azure, bounds, errors, gemini, vllm_extras
from llmsim.api.anthropic_messages import AnthropicMessages
from llmsim.api.errors import ApiError
from llmsim.api.openai_chat import OpenAIChat
from llmsim.api.openai_completions import OpenAICompletions
from llmsim.api.openai_embeddings import OpenAIEmbeddings
from llmsim.api.openai_models import model_object, models_list
from llmsim.api.openai_responses import OpenAIResponses
from llmsim.api.wire import WireFormat
from llmsim.engine.simulator import Engine
from llmsim.server import accounting, live_config, offload, pipeline
from llmsim.server.auth import KeyCheck, load_keys
from llmsim.server.fastpath import FastRoutes
from llmsim.server.metrics import CONTENT_TYPE, render_metrics
from llmsim.server.pipeline import START_KEY  # noqa: F401  (re-exported for the runner)
from llmsim.server.state import ServerState, Shared
from llmsim.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("llmsim.server")

CHAT = OpenAIChat()
ANTHROPIC = AnthropicMessages()
RESPONSES = OpenAIResponses()
COMPLETIONS = OpenAICompletions()
EMBEDDINGS = OpenAIEmbeddings()
AZURE = {"chat/completions": CHAT, "completions": COMPLETIONS, "embeddings": EMBEDDINGS}


def _anthropic_request() -> bool:
    return request.path.startswith("/anthropic/") or "anthropic-version" in request.headers


# The methods of Gemini's models/{model}:{method} paths llmsim knows (and embedContent, which
# it answers with Gemini's 404): what tells one from an OpenAI model id with colons in it.
GEMINI_METHODS = frozenset(
    ("generateContent", "streamGenerateContent", "countTokens", "embedContent",
     "batchEmbedContents")
)  # fmt: skip


def _gemini_request() -> bool:
    # Gemini's SDK also uses /v1/models…: its key header or ?key= tells it from OpenAI's, or a
    # Gemini method after the model. A colon alone does not: OpenAI's fine-tuned models are
    # ft:gpt-4o-mini:org::id, and many local servers' names are like llama3:8b.
    path = request.path
    return (
        path.startswith("/v1beta/")
        or (path.startswith("/v1/models/") and path.rpartition(":")[2] in GEMINI_METHODS)
        or "x-goog-api-key" in request.headers
        or "x-goog-api-client" in request.headers
        or "key" in request.args
    )


def asked_path() -> str:
    """The request's path as the client sent it, for error messages.

    werkzeug's request.path (and its routing) turns leading slashes into one: "//v1/x" is
    "/v1/x" there, and a 404 naming that is a path the client never asked for.
    """
    raw = request.environ.get("PATH_INFO", "")
    extra = len(raw) - len(raw.lstrip("/")) - 1
    return "/" * extra + request.path if extra > 0 else request.path


class _App(Flask):
    """Flask, except that a path starting with "//" is a 404, not routed as if it had one "/".

    werkzeug routes "//v1/chat/completions" as "/v1/chat/completions"; the real APIs do not
    merge slashes (a doubled slash is a client building its URL from a base ending in "/"), so
    the simulator shows that bug where production would instead of hiding it.
    """

    def dispatch_request(self) -> Any:
        """Flask's, after refusing a path that starts with "//" (see the class docstring)."""
        if request.environ.get("PATH_INFO", "").startswith("//"):
            raise NotFound()
        return super().dispatch_request()


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload), status=status, headers=headers, mimetype="application/json"
    )


def create_app(
    settings: Settings, engine: Engine | None = None, shared: Shared | None = None
) -> Flask:
    """Build the simulator's WSGI app. Usable without a server (app.test_client())."""
    app = _App("llmsim")
    # werkzeug's default answers a path with an empty segment ("/v1//chat/completions", an
    # empty Azure deployment) with a 308 HTML redirect to the path without it. The real APIs
    # answer 404 (OpenAI: "Invalid URL (POST /v1//chat/completions)"), and a client that follows
    # the redirect would send the request somewhere it did not ask for.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state = ServerState.create(settings, shared, engine)
    app.extensions["llmsim.state"] = state
    catalogue = list(dict.fromkeys(settings.models))
    engines = state.engines
    max_model_len = engines.max_model_len if engines is not None else None
    if engines is not None:  # a vLLM server lists the model it serves first
        catalogue = list(dict.fromkeys([engines.model, *catalogue]))
    default_model = catalogue[0] if catalogue else "gpt-4o"

    def with_context(obj: dict[str, Any]) -> dict[str, Any]:
        if max_model_len is not None:
            obj.update({"root": obj["id"], "parent": None, "max_model_len": max_model_len})
        return obj

    # The wire format of the route being served, so errors come out in that API's shape.
    def wire() -> WireFormat:
        fmt = getattr(request, "llmsim_wire", None)
        if fmt is None and request.path.startswith("/openai/"):
            return azure.AzureWire(CHAT)
        if fmt is None and _gemini_request():
            return gemini.GeminiWire()
        return fmt or (ANTHROPIC if _anthropic_request() else CHAT)

    def route(fmt: WireFormat) -> Callable[[], Response]:
        def view() -> Response:
            request.llmsim_wire = fmt  # type: ignore[attr-defined]
            return pipeline.handle(fmt, state)

        view.llmsim_wire = fmt  # type: ignore[attr-defined]  (FastRoutes serves it without Flask)
        return view

    app.add_url_rule("/v1/chat/completions", "chat_completions", route(CHAT), methods=["POST"])
    app.add_url_rule("/v1/responses", "responses", route(RESPONSES), methods=["POST"])
    app.add_url_rule("/v1/completions", "completions", route(COMPLETIONS), methods=["POST"])
    app.add_url_rule("/v1/embeddings", "embeddings", route(EMBEDDINGS), methods=["POST"])

    def read_body() -> bytes:
        """The request's body, within the size limit and the (live) body timeout."""
        return pipeline.read_body(
            request.environ, settings.max_body_bytes, state.settings.body_timeout_s
        )

    def read_json() -> Any:
        """The request's JSON body, checked by bounds.loads (a 400 when refused)."""
        return bounds.loads(read_body())

    def counted(count: Callable[[Any], Any]) -> Response:
        """A counting endpoint's answer to the request's JSON body. A large body is parsed,
        counted and rendered on a worker thread (tiktoken encodes without the GIL): on the
        loop, counting a 7 MiB prompt held every stream for about half a second."""
        data = read_body()
        heavy = len(data) > offload.HEAVY_BODY_BYTES
        body = offload.call(heavy, lambda: orjson.dumps(count(bounds.loads(data))))
        return Response(body, mimetype="application/json")

    def count_tokens() -> Response:
        request.llmsim_wire = ANTHROPIC  # type: ignore[attr-defined]
        return counted(anthropic_messages.count_tokens_response)

    # Anthropic's SDK works with base_url http://host:port or http://host:port/anthropic.
    for prefix in ("", "/anthropic"):
        path = f"{prefix}/v1/messages"
        app.add_url_rule(path, f"messages{prefix}", route(ANTHROPIC), methods=["POST"])
        app.add_url_rule(
            path + "/count_tokens", f"count_tokens{prefix}", count_tokens, methods=["POST"]
        )

    # Azure OpenAI: the deployment in the path is the model (see llmsim.api.azure).
    def azure_route(inner: WireFormat, versioned: bool) -> Callable[..., Response]:
        def view(deployment: str | None = None) -> Response:
            version = request.args.get("api-version")
            model = None
            if deployment is not None:
                model = azure.deployment_model(settings.azure_deployment, deployment)
            fmt = azure.AzureWire(inner, model, version, settings.azure_deployment)
            request.llmsim_wire = fmt  # type: ignore[attr-defined]
            bad_version = azure.api_version_error(version) if versioned else None
            if bad_version is not None:
                raise bad_version
            return pipeline.handle(fmt, state)

        return view

    for op, inner in AZURE.items():
        app.add_url_rule(
            f"/openai/deployments/<deployment>/{op}",
            f"azure_{op}",
            azure_route(inner, versioned=True),
            methods=["POST"],
        )
        app.add_url_rule(
            f"/openai/v1/{op}", f"azure_v1_{op}", azure_route(inner, False), methods=["POST"]
        )

    @app.get("/openai/v1/models")
    def azure_models() -> Response:
        return _json_response(models_list(catalogue))

    # Gemini: model and method in one path segment, models/{model}:{method}.
    def gemini_call(target: str) -> Response:
        request.llmsim_wire = gemini.GeminiWire()  # type: ignore[attr-defined]
        model, _, method = target.rpartition(":")
        model = model.removeprefix("models/")
        if not model or method not in ("generateContent", "streamGenerateContent", "countTokens"):
            raise gemini.not_found(f"Method not found: {target}")
        if method == "countTokens":

            def count(body: Any) -> dict[str, Any]:
                tokens = gemini.prompt_tokens(body, model)
                return {
                    "totalTokens": tokens,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
                }

            return counted(count)
        stream = method == "streamGenerateContent"
        fmt = gemini.GeminiWire(model, stream, sse=request.args.get("alt") == "sse")
        request.llmsim_wire = fmt  # type: ignore[attr-defined]
        return pipeline.handle(fmt, state)

    for prefix in ("/v1beta", "/v1"):
        app.add_url_rule(
            f"{prefix}/models/<path:target>",
            f"gemini{prefix}",
            gemini_call,
            methods=["POST"],
        )

    def gemini_models() -> Response:
        listed = [m for m in catalogue if m.startswith("gemini")] or catalogue
        return _json_response({"models": [gemini.model_info(m) for m in listed]})

    def gemini_model(model_id: str) -> Response:
        model_id = model_id.removeprefix("models/")
        if ":" in model_id:
            # models/{model}:{method} is a method, served on POST only; Google's front end
            # routes a GET on it to no method at all, a 404 (as for an unknown method above).
            raise gemini.not_found(f"Method not found: {request.method} models/{model_id}")
        if settings.strict_models and model_id not in state.known_models:
            raise gemini.not_found(f"models/{model_id} is not found for API version v1beta")
        return _json_response(gemini.model_info(model_id))

    app.add_url_rule("/v1beta/models", "gemini_models", gemini_models)
    app.add_url_rule("/v1beta/models/<path:model_id>", "gemini_model", gemini_model)

    @app.get("/v1/models")
    @app.get("/anthropic/v1/models")
    def list_models() -> Response:
        if _gemini_request():
            return gemini_models()
        if _anthropic_request():
            return _json_response(anthropic_messages.models_page(catalogue, request.args))
        listing = models_list(catalogue)
        for obj in listing["data"]:
            with_context(obj)
        return _json_response(listing)

    @app.get("/v1/models/<path:model_id>")
    @app.get("/anthropic/v1/models/<path:model_id>")
    def get_model(model_id: str) -> Response:
        if _gemini_request():
            return gemini_model(model_id)
        if settings.strict_models and model_id not in state.known_models:
            raise errors.model_not_found(model_id)
        if _anthropic_request():
            return _json_response(anthropic_messages.model_info(model_id))
        return _json_response(with_context(model_object(model_id)))

    # vLLM's own endpoints (in api mode too: they only tokenize).
    @app.post("/tokenize")
    def tokenize() -> Response:
        return counted(lambda body: vllm_extras.tokenize(body, default_model, max_model_len))

    @app.post("/detokenize")
    def detokenize() -> Response:
        return counted(lambda body: vllm_extras.detokenize(body, default_model))

    @app.get("/version")
    def version() -> Response:
        return _json_response(vllm_extras.version())

    @app.get("/health")
    def health() -> Response:
        return _json_response({"status": "ok", "version": __version__})

    @app.route("/llmsim/config", methods=["GET", "PATCH"])
    def config() -> Response:
        live_config.check_admin(settings, request.environ)
        state.refresh()
        if request.method == "PATCH":
            changes = live_config.validate_patch(read_json(), state.config_changes)
            # Check the whole result too (e.g. a per_model entry), before any worker sees it.
            try:
                live_config.apply_changes(state.base_settings or settings, changes)
            except Exception as exc:
                raise ApiError(400, str(exc), code="invalid_value") from None
            state.reconfigure(state.shared.config.write(changes), changes)
            log.info("configuration changed: %s", ", ".join(sorted(changes)) or "reset")
        return _json_response(
            live_config.public_view(state.settings, state.config_changes, state.config_version)
        )

    @app.get("/llmsim/stats")
    def stats() -> Response:
        snap = state.stats.snapshot()
        snap["worker"] = state.shared.worker  # which worker answered (the rest is shared)
        loop = state.loop
        if loop is not None:  # this worker's stream loop: how often it woke and what it sent
            snap["stream_loop"] = {
                "in_flight": len(loop),
                "sweeps": loop.sweeps,
                "fired": loop.fired,
                # The wait between sweeps in force (--coalesce-ms) and the rate it follows.
                "window_ms": round(loop.window * 1000, 3),
                "events_per_s": round(loop.rate, 1),
                "lateness": loop.lateness.snapshot(),
            }
        policy = gcpolicy.active()
        if policy is not None:
            snap["gc"] = policy.snapshot()
        if engines is not None and state.shared.engine_stats is not None:
            rc = engines.replica_config
            snap["engine"] = {
                "kind": "vllm",
                "preset": engines.preset.name,
                "model": engines.model,
                "hardware": engines.preset.hardware,
                "max_model_len": rc.max_model_len,
                "max_num_seqs": rc.max_num_seqs,
                "max_num_batched_tokens": rc.max_num_batched_tokens,
                "block_size": rc.block_size,
                "chunked_prefill": rc.chunked_prefill,
                "prefix_caching": rc.prefix_caching,
                "num_scheduler_steps": rc.num_scheduler_steps,
                "frontend_ms_per_request": round(rc.frontend_s_per_request * 1e3, 6),
                "frontend_us_per_prompt_token": round(rc.frontend_s_per_prompt_token * 1e6, 6),
                "frontend_handover_order": rc.frontend_handover_order,
                "replicas": state.shared.engine_stats.replica_rows(),
            }
        snap["rate_limits"] = state.limiter.snapshot()
        return _json_response(snap)

    @app.get("/llmsim/requests/<request_id>")
    def request_events(request_id: str) -> Response:
        found = state.stream_loop().events.get(request_id)
        peers = state.shared.peer_logs
        if found is None and peers is not None:  # served by another worker?
            found = peers.ask(state.shared.worker, request_id)
        if found is None:
            raise ApiError(
                404,
                f"No request {request_id!r} in the server's log (each worker keeps the last "
                f"{settings.request_log_size} it served).",
                code="not_found",
            )
        return _json_response(found)

    @app.get("/metrics")
    def metrics() -> Response:
        body = render_metrics(
            state.stats, state.shared.engine_stats, engines.model if engines else None
        )
        return Response(body, mimetype=None, content_type=CONTENT_TYPE)

    def error_response(err: ApiError) -> Response:
        return Response(
            wire().error_body(err),
            status=err.status,
            headers=err.headers,
            mimetype="application/json",
        )

    @app.errorhandler(ApiError)
    def on_api_error(err: ApiError) -> Response:
        if not isinstance(err, pipeline.CountedError):
            state.stats.request_failed(None, pipeline.error_kind(err.status))
        return error_response(err)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        if isinstance(exc, NotFound):
            err = errors.not_found_url(request.method, asked_path())
        elif isinstance(exc, MethodNotAllowed):
            err = errors.method_not_allowed(request.method, asked_path())
            err.headers["Allow"] = ", ".join(exc.valid_methods or ())
        elif isinstance(exc, RequestEntityTooLarge):
            err = errors.body_too_large(settings.max_body_bytes)
        else:
            err = ApiError(exc.code or 400, exc.description or exc.name)
        state.stats.request_failed(None, pipeline.error_kind(err.status))
        return error_response(err)

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not accounting.is_counted(exc):
            state.stats.request_failed(None, "server_error")
        return error_response(errors.server_error())

    # POST routes made by route() skip Flask's per-request machinery (see fastpath.py).
    app.wsgi_app = FastRoutes(app, lambda fmt, environ: pipeline.handle(fmt, state, environ))
    keys = load_keys(settings)
    if keys:  # only then: a server without keys pays nothing for the check
        app.wsgi_app = KeyCheck(app.wsgi_app, keys)
    return app
