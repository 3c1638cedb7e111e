"""The Flask app Label Studio talks to (label-studio-ml 2.x protocol, on Flask 3).

Routes (JSON unless noted):

- ``GET /health`` → ``{"status": "UP", "model_class": …, "model_version": …}``; never behind
  basic auth.
- ``GET /`` → the task centre, an HTML page (``page.py``): model version, training progress,
  accuracy per version and loss plots.
- ``POST /setup`` ``{project, schema, …}`` → ``{"model_version": …}``.
- ``POST /predict`` ``{tasks: [...], label_config, params: {context}}`` →
  ``{"results": [{"model_version", "score", "result": [...]}, …]}``, one per task, in order.
- ``POST /webhook`` ``{action, project, …}``: ``START_TRAINING`` starts the training job;
  ``ANNOTATION_CREATED/UPDATED/DELETED`` are acknowledged, logged and passed to the hook.
- ``POST /prefetch`` ``{project, top}``: prefetch (again) the predictions of the ``top`` most
  influential tasks of ``project`` (``prefetch_routes.py``); ``/health`` shows its progress.
- ``GET /versions`` → ``{"versions": [...], "model_version": …, "training": …}``.
- ``GET /train/status`` → the training job's status.
- ``GET /saliency/<key>.png?exp=…&sig=…`` → the heatmap PNG for the served model version, while
  the URL has not expired (predictions of its task renew it). The HMAC signature is its
  authorisation (an ``<img>`` in the annotator's browser cannot send the
  backend's basic-auth credentials), so it is exempt from basic auth and needs a valid ``sig``.

``/setup``, ``/predict`` and ``/webhook`` note the Label Studio project their body names
(:mod:`robustar_ls.backend.project_memory`): the page links to it, the prefetch works for it.

Every other route needs HTTP basic auth when ``basic_auth_user``/``basic_auth_pass`` are set
(one without the other is refused when the app is built).
Errors are JSON ``{"error": …}`` with a 4xx/5xx status; no traceback ever reaches a client.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from robustar_ls.backend.build import build_predictor
from robustar_ls.backend.images import ImageFetchError
from robustar_ls.backend.page import register_page
from robustar_ls.backend.predictor import Predictor
from robustar_ls.backend.prefetch_routes import answer_deferred, register_prefetch
from robustar_ls.backend.prefetch_state import prefetch_status
from robustar_ls.backend.project_memory import ProjectMemory
from robustar_ls.config import ServeConfig, check_basic_auth
from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio.config import LabelConfigError
from robustar_ls.labelstudio.urls import (
    Renewals,
    image_ref_from_key,
    parse_expires,
    resolve_secret,
    signed_url_parts,
    verify,
)

log = logging.getLogger(__name__)

MODEL_CLASS = "RobustarBackend"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")
TRAIN_EVENTS = ("START_TRAINING",)
PUBLIC_ENDPOINTS = {"health", "saliency", "static"}

AnnotationHook = Callable[[str, dict[str, Any]], Any]


class ApiError(RobustarError):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class BackendState:
    cfg: ServeConfig
    predictor: Predictor
    jobs: Any | None
    secret: str
    annotation_hook: AnnotationHook | None
    renewals: Renewals
    project: ProjectMemory  # the Label Studio project named last
    prefetcher: Any | None = None


def create_app(
    cfg: ServeConfig,
    predictor: Predictor | None = None,
    jobs: Any | None = None,
    annotation_hook: AnnotationHook | None = None,
    prefetcher: Any | None = None,
) -> Flask:
    """Build the app. ``predictor=None`` loads the checkpoint (and segmenter) from ``cfg`` now.

    ``jobs`` is a ``robustar_ls.workflows.jobs.TrainingJobs`` (``start(payload)``, ``status()``);
    without it ``START_TRAINING`` is answered with a clear 501. ``prefetcher`` (a
    ``robustar_ls.backend.prefetch.Prefetcher``, or a callable building one from the predictor)
    stores predictions of the most influential tasks in Label Studio (``POST /prefetch``, its
    status in ``/health``); whoever builds it starts it.
    """
    app = Flask("robustar_ls.backend")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    app.json.sort_keys = False
    state = BackendState(
        cfg=cfg,
        predictor=predictor if predictor is not None else build_predictor(cfg),
        jobs=jobs,
        secret=resolve_secret(cfg.secret, cfg.resolved_cache_dir()),
        annotation_hook=annotation_hook,
        renewals=Renewals(
            cfg.resolved_cache_dir() / "saliency-renewals", cfg.saliency_url_lifetime
        ),
        project=ProjectMemory(cfg.resolved_cache_dir()),
    )
    if callable(prefetcher):
        prefetcher = prefetcher(state.predictor)
    state.prefetcher = prefetcher
    app.extensions["robustar_ls"] = state
    _register_auth(app, cfg)
    _register_errors(app)
    _register_routes(app, state)
    return app


def _register_auth(app: Flask, cfg: ServeConfig) -> None:
    check_basic_auth(cfg.basic_auth_user, cfg.basic_auth_pass)  # half-set: refuse to start
    if not cfg.basic_auth_user:
        return
    user, password = cfg.basic_auth_user.encode(), cfg.basic_auth_pass.encode()

    @app.before_request
    def require_basic_auth() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode(), user)
            and hmac.compare_digest((auth.password or "").encode(), password)
        )
        if ok:
            return None
        response = jsonify(error="unauthorized: this ML backend needs HTTP basic auth")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="robustar-ls"'
        return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return jsonify(error=str(err)), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify(error=f"{err.name}: {err.description}"), err.code or 500

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return jsonify(error="internal error in the ML backend; see its log"), 500


def _json_body() -> dict[str, Any]:
    try:
        body = request.get_json(silent=True, force=True)
    except RecursionError:
        raise ApiError("the request body is JSON nested too deeply", 400) from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", 400)
    return body


def _object_or_none(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ApiError(f"'{name}' must be a JSON object, not {type(value).__name__}", 400)
    return value


def _context(body: dict[str, Any]) -> dict[str, Any] | None:
    """``params.context`` of a /predict body: None, or an object whose ``result`` is a list of
    regions (objects)."""
    params = _object_or_none(body, "params") or {}
    context = _object_or_none(params, "context")
    if context is None:
        return None
    regions = context.get("result")
    if regions is not None and not (
        isinstance(regions, list) and all(isinstance(r, dict) for r in regions)
    ):
        raise ApiError("'params.context.result' must be a list of region objects", 400)
    return context


def _renew_saliency_urls(state: BackendState, tasks: list[Any]) -> None:
    """A prediction renews the validly signed saliency URLs in its tasks' data."""
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        for value in data.values() if isinstance(data, dict) else ():
            parts = signed_url_parts(value) if isinstance(value, str) else None
            if parts and verify(parts[0], parts[1], state.secret, parts[2]):
                try:
                    state.renewals.renew(parts[0])
                except OSError as err:
                    log.warning("cannot record a saliency URL renewal: %s", err.strerror)


def _register_routes(app: Flask, state: BackendState) -> None:
    _register_model_routes(app, state)
    _register_training_routes(app, state)
    _register_saliency_route(app, state)
    register_prefetch(app, state)
    register_page(app, state)


def _register_model_routes(app: Flask, state: BackendState) -> None:
    """Label Studio's ML-backend API: health, setup, predict."""
    predictor = state.predictor

    @app.get("/health")
    def health():
        version = predictor.model_version
        body = {"status": "UP", "model_class": MODEL_CLASS, "model_version": version}
        holder = predictor.holder
        if holder.source != "checkpoint" or holder.last_error:
            body["serving"] = holder.source
            body["checkpoint_error"] = "the checkpoint file cannot be loaded; see the log"
        body["prefetch"] = prefetch_status(state.prefetcher)
        return jsonify(body)

    @app.post("/setup")
    def setup():
        body = _json_body()
        state.project.note(body.get("project"))
        log.debug("setup for project %s", body.get("project"))
        return jsonify(model_version=predictor.model_version)

    @app.post("/predict")
    def predict():
        body = _json_body()
        state.project.note(body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ApiError("'tasks' must be a non-empty list of Label Studio tasks", 400)
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise ApiError("'label_config' must be the labeling config XML (a string)", 400)
        context = _context(body)
        try:
            results = predictor.predict(tasks, label_config=label_config, context=context)
        except LabelConfigError as err:
            raise ApiError(f"label config cannot be used: {err}", 422) from err
        _renew_saliency_urls(state, tasks)
        return jsonify(results=answer_deferred(state.prefetcher, body, tasks, results))


def _register_training_routes(app: Flask, state: BackendState) -> None:
    """Webhook events (Start Training, annotation events) and the training status."""
    predictor = state.predictor

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        state.project.note(body.get("project"))
        event = body.get("action")
        if event in TRAIN_EVENTS:
            if state.jobs is None:
                raise ApiError(
                    "training is not configured on this backend; run `robustar-ls sync-train` "
                    "or start the backend with training enabled",
                    501,
                )
            started, status = state.jobs.start(body)
            log.info("START_TRAINING: %s", "started" if started else "already running")
            code = 201 if started else 200
            return jsonify(status="ok" if started else "busy", result=status), code
        if event in ANNOTATION_EVENTS:
            annotation = _object_or_none(body, "annotation") or {}
            task = _object_or_none(body, "task") or {}
            log.info("%s: annotation %s of task %s", event, annotation.get("id"), task.get("id"))
            result = state.annotation_hook(event, body) if state.annotation_hook else None
            return jsonify(status="ok", event=event, result=result), 200
        log.info("webhook event %.80r ignored", event)
        return jsonify(status="Unknown event", event=event if isinstance(event, str) else None), 200

    @app.get("/versions")
    def versions():
        version = predictor.model_version
        training = state.jobs.status() if state.jobs is not None else None
        return jsonify(versions=[version], model_version=version, training=training)

    @app.get("/train/status")
    def train_status():
        if state.jobs is None:
            raise ApiError("training is not configured on this backend", 501)
        return jsonify(state.jobs.status())


def _register_saliency_route(app: Flask, state: BackendState) -> None:
    """The signed heatmap PNG URLs written into task data."""
    predictor = state.predictor

    @app.get("/saliency/<key>.png")
    def saliency(key: str):
        try:
            expires = parse_expires(request.args.get("exp"))
        except ValueError as err:
            raise ApiError(str(err), 400) from err
        if not verify(key, request.args.get("sig", ""), state.secret, expires):
            raise ApiError("bad or missing signature for this saliency URL", 403)
        if not state.renewals.valid(key, expires):
            raise ApiError(
                "this saliency URL has expired; open the task again in Label Studio (its "
                "prediction renews the URL) or re-run `robustar-ls import`",
                403,
            )
        try:
            image_ref = image_ref_from_key(key)
        except ValueError as err:
            raise ApiError(str(err), 400) from err
        try:
            png, version = predictor.saliency_png(image_ref)
        except ImageFetchError as err:
            log.warning("saliency for %r: %s", image_ref, err)
            raise ApiError(str(err), err.status) from err
        response = Response(png, mimetype="image/png")
        response.set_etag(f"{version}-{key[:64]}")
        response.headers["Cache-Control"] = "no-cache"  # revalidate: the model may change
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["X-Model-Version"] = version
        return response.make_conditional(request)
