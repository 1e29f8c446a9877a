"""The server scaled out on Ray Serve: `serve run optimum_onnx23.serving.ray:build_app model=DIR num_replicas=2`.

Each replica is its own process with its own engine (one onnxruntime session, continuous batching)
and serves `create_app`'s routes unchanged; Ray Serve's HTTP proxy spreads requests over the
replicas, on whichever nodes of the cluster they run. Responses carry `X-Onnx23-Replica` (the
replica's id), so a client or a test can see where a request went.

The replica loads the model in its constructor, so Ray marks it RUNNING (and routes to it) only once
the model is loaded; the FastAPI app is built afterwards by an ingress builder function (Ray Serve
>= 2.46), with the replica's engine passed in, so `create_app`'s lifespan loads nothing twice.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from .app import ServerConfig, create_app, load_engine

__all__ = ["OnnxServer", "build_app"]

REPLICA_HEADER = "x-onnx23-replica"

# name -> how to convert the value; strings come from the `serve run` command line. Defaults are ServerConfig's.
_CONFIG_ARGS: dict[str, Any] = {
    "model": str,
    "served_model_name": str,
    "max_num_seqs": int,
    "max_queue": int,
    "max_model_len": int,
    "provider": str,
    "prefill_chunk": int,
    "max_num_batched_tokens": int,
    "kv_cache": str,
    "revision": str,
    "local_files_only": "bool",
}
_DEPLOYMENT_ARGS: dict[str, Any] = {"num_replicas": int}
_ACTOR_ARGS: dict[str, Any] = {"num_cpus": float, "num_gpus": float, "memory": float}
ACCEPTED = sorted({*_CONFIG_ARGS, *_DEPLOYMENT_ARGS, *_ACTOR_ARGS})


def _convert(name: str, value: Any, kind: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"build_app: `{name}` must be true or false, got {value!r}.")
    if kind is str:
        return str(value)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"build_app: `{name}` must be {'an integer' if kind is int else 'a number'}, got {value!r}.") from None
    if converted <= 0 and name not in ("num_gpus", "num_cpus"):
        raise ValueError(f"build_app: `{name}` must be positive, got {value!r}.")
    if converted < 0:
        raise ValueError(f"build_app: `{name}` must not be negative, got {value!r}.")
    return converted


def parse_args(args: dict[str, Any]) -> tuple[ServerConfig, dict[str, Any]]:
    """`serve run`'s `key=value` arguments -> the server config and the deployment's options."""
    unknown = sorted(set(args) - set(ACCEPTED))
    if unknown:
        raise ValueError(f"build_app: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(ACCEPTED)}.")
    if not args.get("model"):
        raise ValueError("build_app: the `model` argument is required (an export folder, Hub layout or Hub id): `serve run optimum_onnx23.serving.ray:build_app model=DIR`.")
    config = ServerConfig(**{name: _convert(name, args[name], kind) for name, kind in _CONFIG_ARGS.items() if args.get(name) is not None})
    if os.path.exists(config.model):  # replicas do not run in `serve run`'s folder: `model=./dir` made absolute
        config.model = os.path.abspath(config.model)
    actor_options = {name: _convert(name, args[name], kind) for name, kind in _ACTOR_ARGS.items() if args.get(name) is not None}
    actor_options.setdefault("num_cpus", 1)
    options = {
        "num_replicas": _convert("num_replicas", args.get("num_replicas", 1), int),
        # A replica holds at most max_num_seqs rows in its batch plus max_queue waiting requests
        # before its own scheduler answers 429; letting Ray route more to it would only queue them
        # where they cannot run, while another replica may have room. Matching the limit keeps
        # the overflow in Ray's router (which picks the least loaded replica) instead.
        "max_ongoing_requests": config.max_num_seqs + config.max_queue,
        "ray_actor_options": actor_options,
    }
    return config, options


# The replica's app, filled in its constructor and read by the ingress builder below (both are
# module-level functions, so Ray ships them by reference and they share this module's globals in
# the replica's process).
_REPLICA: dict[str, Any] = {}


def _start_replica(config: ServerConfig) -> None:
    engine = load_engine(config)
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # not inside a replica (a unit test calling the constructor)
        replica = "local"
    app = create_app(config, engine=engine)
    app.add_middleware(_ReplicaHeader, replica=replica)
    _REPLICA.update(engine=engine, app=app, replica=replica)


def _build_asgi_app():
    return _REPLICA["app"]


class _ReplicaHeader:
    """Pure ASGI middleware (streaming untouched): adds the replica's id to every response."""

    def __init__(self, app, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.ingress(_build_asgi_app)
class OnnxServer:
    """One replica: an engine over its own onnxruntime session, behind `create_app`'s routes."""

    async def __init__(self, config: ServerConfig) -> None:
        # Loading takes seconds on a real model: off the replica's event loop.
        await asyncio.to_thread(_start_replica, config)
        self.engine = _REPLICA["engine"]

    def check_health(self) -> None:
        """Ray restarts a replica whose engine thread died."""
        if not self.engine._thread.is_alive():
            raise RuntimeError("the onnx23 engine thread is not running")


def build_app(args: dict[str, Any]) -> Application:
    """`serve run optimum_onnx23.serving.ray:build_app model=DIR [num_replicas=N] [max_num_seqs=16]
    [max_queue=64] [max_model_len=N] [provider=...] [served_model_name=...] [prefill_chunk=256]
    [max_num_batched_tokens=64] [kv_cache=auto|slots|dynamic]
    [num_cpus=1] [num_gpus=N]`."""
    config, options = parse_args(dict(args))
    return serve.deployment(OnnxServer, name="onnx23").options(**options).bind(config)
