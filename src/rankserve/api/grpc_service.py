"""KServe V2 gRPC (Open Inference Protocol) beside the HTTP API: the interface NIM serves on 8001.

One ``grpc.aio`` server in the same process and event loop as the HTTP app, calling the same
``Engine.rank`` / ``Engine.embed`` (one model copy, one batcher per model, HTTP and gRPC requests
batched together), with the same limits, API keys (``authorization: Bearer <key>`` metadata),
priority (``x-priority`` metadata), request timeout and error table (``errors.STATUS`` names each
error's gRPC code). Requests and errors are counted under ``route="grpc <Method>"``.

As NIM documents it:
- model name: the served id lowercased, every character not an ASCII letter or digit -> ``_``;
- rerank: inputs ``query`` [N,1] BYTES (one distinct query) and ``passage`` (or ``passages``)
  [N,1] BYTES, parameter ``truncate``; outputs ``index`` [N,1] INT32 (best first), ``logit``
  [N,1] FP32 and ``token_count`` [N] INT32, all three in that ranked order;
- embed: input ``text`` [N,1] BYTES, parameters ``input_type``, ``truncate``, ``dimensions``;
  outputs ``embeddings`` [N,d] FP32 and ``token_count`` [N] INT32.

The service is registered by name (``inference.GRPCInferenceService``) with generic handlers over
the messages in ``api/kserve/open_inference_pb2.py`` (see that .proto for why their package is not
``inference``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from rankserve import __version__
from rankserve.api.kserve import open_inference_pb2 as pb
from rankserve.api.requests import authorized, check_embed_input, check_rank_input, parse_priority, ready_engines
from rankserve.engine.engine import Engine
from rankserve.errors import (
    InvalidRequest,
    RankserveError,
    RequestTimeout,
    Unauthorized,
    UnknownModel,
    grpc_code_of,
    status_of,
)

log = logging.getLogger("rankserve")
SERVICE = "inference.GRPCInferenceService"
RANK_INPUTS = [("query", "BYTES", [-1, 1]), ("passage", "BYTES", [-1, 1])]
RANK_OUTPUTS = [("index", "INT32", [-1, 1]), ("logit", "FP32", [-1, 1]), ("token_count", "INT32", [-1])]
EMBED_INPUTS = [("text", "BYTES", [-1, 1])]
EMBED_OUTPUTS = [("embeddings", "FP32", [-1, -1]), ("token_count", "INT32", [-1])]


def grpc_name(served: str) -> str:
    """NIM's gRPC model name: lowercased, every non-ASCII-alphanumeric character -> ``_``."""
    return re.sub(r"[^a-z0-9]", "_", served.lower())


def decode_bytes(raw: bytes, name: str) -> list[bytes]:
    """A BYTES tensor's raw contents: each element is a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidRequest(f"input {name!r}: truncated BYTES element length", param=name)
        size = int.from_bytes(raw[at : at + 4], "little")
        if at + 4 + size > len(raw):
            raise InvalidRequest(f"input {name!r}: a BYTES element runs past the tensor's data", param=name)
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def input_texts(request: Any) -> dict[str, list[str]]:
    """Every input tensor of a ModelInfer request as UTF-8 strings (BYTES only), by name."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest("raw_input_contents must hold one entry per input")
    texts: dict[str, list[str]] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype != "BYTES":
            raise InvalidRequest(f"input {tensor.name!r} must be BYTES, got {tensor.datatype}", param=tensor.name)
        items = (
            decode_bytes(request.raw_input_contents[i], tensor.name)
            if request.raw_input_contents
            else list(tensor.contents.bytes_contents)
        )
        expected = int(np.prod(tensor.shape)) if len(tensor.shape) else len(items)
        if len(items) != expected:
            raise InvalidRequest(
                f"input {tensor.name!r} has {len(items)} elements but its shape {list(tensor.shape)} holds {expected}",
                param=tensor.name,
            )
        try:
            texts[tensor.name] = [item.decode("utf-8") for item in items]
        except UnicodeDecodeError:
            raise InvalidRequest(f"input {tensor.name!r} holds bytes that are not UTF-8", param=tensor.name) from None
    return texts


def parameter(request: Any, name: str) -> Any:
    """A request-level parameter's value (string, int or bool), None when absent."""
    if name not in request.parameters:
        return None
    p = request.parameters[name]
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def string_parameter(request: Any, name: str, choices: tuple[str, ...]) -> str | None:
    value = parameter(request, name)
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in choices:
        raise InvalidRequest(f"parameter {name!r} must be one of {', '.join(choices)}", param=name)
    return value.upper()


def tensor_metadata(specs: list[tuple[str, str, list[int]]]) -> list[Any]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in specs]


class InferenceService:
    """The six KServe V2 methods over the app's state (its engines, config, metrics, API keys)."""

    def __init__(self, state: Any):
        self.state = state

    # -- plumbing -------------------------------------------------------------------------------

    def engine(self, name: str) -> Engine:
        engines = ready_engines(self.state)
        for served, engine in engines.items():
            if name in (served, grpc_name(served)):
                return engine
        names = ", ".join(repr(grpc_name(n)) for n in engines)
        raise UnknownModel(f"model {name!r} is not served here; this server serves {names}", param="model_name")

    async def call(self, method: str, context: Any, work: Callable[[], Awaitable[Any]], auth: bool) -> Any:
        """Run one RPC: API key, metrics, and domain errors as gRPC status codes with their messages."""
        metrics, route, started = self.state.metrics, f"grpc {method}", time.perf_counter()
        code = "OK"
        try:
            if auth:
                header = dict(context.invocation_metadata() or ()).get("authorization", "")
                if not authorized(self.state.api_keys, header):
                    raise Unauthorized("missing or invalid API key (send metadata authorization: Bearer <key>)")
            return await work()
        except RankserveError as exc:
            code = grpc_code_of(exc)
            metrics.rejections.labels(reason=status_of(exc)[1]).inc()
            await context.abort(getattr(grpc.StatusCode, code), exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        finally:
            metrics.requests.labels(route=route, status=code).inc()
            if code != "OK":
                metrics.errors.labels(route=route, status=code).inc()
            metrics.latency.labels(route=route).observe(time.perf_counter() - started)

    async def bounded(self, work: Awaitable[Any]) -> Any:
        """The request timeout, as on HTTP (a timed-out request's queued work is dropped)."""
        timeout = self.state.config.request_timeout or None
        try:
            return await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"the request did not finish within {timeout:g} s (request_timeout); its queued work was dropped"
            ) from None

    # -- the service ----------------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        s = self.state
        return pb.ServerReadyResponse(ready=bool(s.ready and not s.draining and s.fatal is None))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            try:
                self.engine(request.name)
            except RankserveError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self.call("ModelReady", context, work, auth=False)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="rankserve", version=__version__, extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            engine = self.engine(request.name)
            rank = engine.spec.kind == "cross-encoder"
            return pb.ModelMetadataResponse(
                name=grpc_name(engine.name),
                versions=["1"],
                platform="rankserve",
                inputs=tensor_metadata(RANK_INPUTS if rank else EMBED_INPUTS),
                outputs=tensor_metadata(RANK_OUTPUTS if rank else EMBED_OUTPUTS),
            )

        return await self.call("ModelMetadata", context, work, auth=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            engine = self.engine(request.model_name)
            texts = input_texts(request)
            priority = parse_priority(dict(context.invocation_metadata() or ()).get("x-priority", "interactive"))
            if "text" in texts:
                outputs = await self.embed(engine, request, texts["text"], priority)
            elif "query" in texts:
                outputs = await self.rank(engine, request, texts, priority)
            else:
                raise InvalidRequest(f"inputs {sorted(texts)}: send query and passage (rerank) or text (embed)")
            wanted, names = [o.name for o in request.outputs], [o[0] for o in outputs]
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise InvalidRequest(f"unknown outputs {unknown}; this model returns {names}")
            chosen = [o for o in outputs if not wanted or o[0] in wanted]
            return pb.ModelInferResponse(
                model_name=grpc_name(engine.name),
                model_version="1",
                id=request.id,
                outputs=[
                    pb.ModelInferResponse.InferOutputTensor(name=n, datatype=d, shape=list(a.shape))
                    for n, d, a in chosen
                ],
                raw_output_contents=[a.tobytes() for _, _, a in chosen],
            )

        return await self.call("ModelInfer", context, work, auth=True)

    async def rank(self, engine: Engine, request: Any, texts: dict[str, list[str]], priority: str) -> list:
        queries = texts["query"]
        passages = texts.get("passage", texts.get("passages"))
        if passages is None:
            raise InvalidRequest("rerank needs a passage input (BYTES [N,1]) beside query", param="passage")
        if not passages:
            raise InvalidRequest("passage is empty: send at least one passage", param="passage")
        if len(set(queries)) != 1:
            raise InvalidRequest(
                f"query must hold one distinct query per request (got {len(set(queries))})", param="query"
            )
        config = self.state.config
        truncate = string_parameter(request, "truncate", ("END", "NONE", "CHUNK")) or config.truncate_default
        check_rank_input(config, queries[0], passages, "passage")
        result = await self.bounded(engine.rank(queries[0], passages, truncate, priority))  # type: ignore[arg-type]
        order = result.order
        return [
            ("index", "INT32", np.array(order, dtype="<i4").reshape(-1, 1)),
            ("logit", "FP32", np.array([result.scores[i] for i in order], dtype="<f4").reshape(-1, 1)),
            ("token_count", "INT32", np.array([result.token_counts[i] for i in order], dtype="<i4")),
        ]

    async def embed(self, engine: Engine, request: Any, texts: list[str], priority: str) -> list:
        input_type = parameter(request, "input_type")
        if input_type is not None and input_type not in ("query", "passage"):
            raise InvalidRequest("parameter 'input_type' must be query or passage", param="input_type")
        truncate = string_parameter(request, "truncate", ("END", "START", "NONE")) or "NONE"
        dimensions = parameter(request, "dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise InvalidRequest("parameter 'dimensions' must be an integer", param="dimensions")
        check_embed_input(self.state.config, texts, "text")
        result = await self.bounded(engine.embed(texts, input_type, truncate, dimensions, priority))  # type: ignore[arg-type]
        return [
            ("embeddings", "FP32", result.vectors.astype("<f4")),
            ("token_count", "INT32", np.array(result.token_counts, dtype="<i4")),
        ]


def handlers(service: InferenceService) -> Any:
    """The generic handler table for ``inference.GRPCInferenceService``."""
    methods = {
        "ServerLive": (pb.ServerLiveRequest, service.ServerLive),
        "ServerReady": (pb.ServerReadyRequest, service.ServerReady),
        "ModelReady": (pb.ModelReadyRequest, service.ModelReady),
        "ServerMetadata": (pb.ServerMetadataRequest, service.ServerMetadata),
        "ModelMetadata": (pb.ModelMetadataRequest, service.ModelMetadata),
        "ModelInfer": (pb.ModelInferRequest, service.ModelInfer),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=message.FromString, response_serializer=lambda m: m.SerializeToString()
            )
            for name, (message, fn) in methods.items()
        },
    )


async def start(state: Any) -> Any:
    """A started ``grpc.aio`` server on ``config.host:config.grpc_port`` (TLS when HTTPS is set up)."""
    config = state.config
    limit = config.max_request_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ]
    )
    server.add_generic_rpc_handlers((handlers(InferenceService(state)),))
    address = f"{config.host}:{config.grpc_port}"
    if config.ssl_certfile:
        with open(config.ssl_keyfile, "rb") as key, open(config.ssl_certfile, "rb") as chain:
            credentials = grpc.ssl_server_credentials([(key.read(), chain.read())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("gRPC (KServe V2) listening on %s", address)
    return server
