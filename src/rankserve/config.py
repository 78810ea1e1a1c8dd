"""Server configuration: one frozen dataclass, validated once at start.

Every field is settable three ways with one precedence: CLI flag > ``RANKSERVE_<FIELD>`` env var >
NIM's own env name (where NIM has one) > default. ``cli.py`` builds its flags from ``FIELDS`` so a
new setting is added here once and appears everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankserve.errors import ConfigError
from rankserve.model_source import ref_problem

DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("torch", "onnxruntime", "openvino")
QUANTIZE = ("none", "int8")
CPU_GEMMS = ("auto", "torch", "onednn")
TRUNCATE_DEFAULTS = ("NONE", "END", "CHUNK")  # what a ranking request may ask for (CHUNK: windows)
CHUNK_AGGREGATES = ("max", "mean")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
RECIPE_NAMES = ("qwen3-reranker", "bge-reranker-gemma", "mxbai-rerank-v2", "yes-no")  # models/recipes.py RECIPES

# NIM's env names for the settings it has (the NIM docs' names; users' compose files use them).
NIM_ENV = {
    "model": "NIM_MODEL_PATH",
    "port": "NIM_HTTP_API_PORT",
    "served_model_name": "NIM_SERVED_MODEL_NAME",
    "log_level": "NIM_LOG_LEVEL",
    "max_queue_requests": "NIM_SERVER_MAX_QUEUE_SIZE",
    "request_timeout": "NIM_SERVER_REQUEST_TIMEOUT_S",
    "ssl_certfile": "NIM_TLS_CERT_PATH",
    "ssl_keyfile": "NIM_TLS_KEY_PATH",
    "grpc_port": "NIM_GRPC_API_PORT",
}
# NIM 2.x names the gRPC listener by address (host:port); its port is taken.
NIM_BIND_ADDR = {"grpc_port": "NIM_SERVER_GRPC_BIND_ADDR"}


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What one rankserve process serves and how."""

    # Model directory, or a Hugging Face Hub repo id (org/name, optionally @revision) fetched into the
    # HF cache (model_source.py); None = the packaged all-MiniLM-L6-v2. Several models: comma-separated
    # NAME=PATH entries (the CLI's repeatable --model joins them): see ``model_entries``.
    model: str | None = None
    revision: str | None = None  # Hub revision (branch, tag, commit) for repo ids without their own @rev
    served_model_name: str | None = None  # id in /v1/models and request `model`; None = derived
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = 0  # KServe V2 gRPC (NIM's port 8001) on this port, same host and engines; 0 = off
    log_level: str = "info"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto: CPU float32 (exact, batch-invariant; bfloat16 opt-in: cpu_bf16.py); CUDA bf16/fp16
    backend: str = "torch"
    quantize: str = "none"  # none | int8 (lossy, opt-in: dynamic int8 weights, backend onnxruntime only)
    threads: int = 0  # torch intra-op threads; 0 = the cores this process may use
    cpu_gemm: str = "auto"  # fp32 linear layers on CPU: auto (time both at start) | torch | onednn
    max_passages: int = 1000  # per /v1/ranking request
    max_inputs: int = 2048  # per /v1/embeddings request
    max_length: int = 0  # token limit per sequence; 0 = the model's own
    # Prompt overrides; None = what the model directory says, else the family's documented default.
    rerank_template: str | None = None  # e.g. "question:{query} \n \n passage:{passage}"
    query_prefix: str | None = None  # e.g. "query: "
    passage_prefix: str | None = None  # e.g. "passage: "
    # Decoder rerankers scored by an answer token (models/recipes.py): qwen3-reranker |
    # bge-reranker-gemma | mxbai-rerank-v2 | yes-no (with rerank_template and score_tokens); None =
    # the one the folder's name implies, if any.
    recipe: str | None = None
    instruction: str | None = None  # the recipe prompt's instruction (Qwen3-Reranker's has a default)
    score_tokens: str | None = None  # POSITIVE[,NEGATIVE] answer tokens, e.g. "yes,no"
    max_batch_tokens: int = 0  # padded tokens (longest x rows) per forward pass; 0 = 4096 on CPU, 65536 on CUDA
    # A second model thread for small interactive requests while a long pass runs (CPU torch and
    # onnxruntime runners): they answer beside the pass instead of after it (engine/batcher.py).
    express_lane: bool = True
    max_queue_items: int = 100_000  # pairs/texts waiting; beyond this requests get 503
    max_queue_tokens: int = 4_000_000  # tokens waiting; beyond this requests get 503; 0 = unbounded
    max_queue_requests: int = 1024  # requests waiting (NIM's default queue size); 0 = unbounded
    request_timeout: float = 120.0  # seconds per request (NIM's default), then 504; 0 = none
    drain_timeout: float = 30.0  # seconds SIGTERM waits for admitted requests before closing
    max_request_bytes: int = 8 * 1024 * 1024
    max_text_chars: int = 100_000  # characters per query/passage/input text; more is a 413
    max_request_tokens: int = 1_000_000  # tokens per request after truncation; more is a 413
    max_image_bytes: int = 5 * 1024 * 1024  # per image passage, decoded from base64; more is a 400
    max_request_images: int = 64  # image passages per ranking request; more is a 413
    # per image (width x height, read from its header before decoding: decompression bombs); more is a 400
    max_image_pixels: int = 25_000_000
    # Ranking requests that omit truncate (and Cohere's rerank, which has no such field): NONE | END |
    # CHUNK (score overlapping windows of a long passage, keep the best: see engine._rank_windows).
    truncate_default: str = "END"
    chunk_aggregate: str = "max"  # how CHUNK combines a passage's window scores: max | mean
    # Windows scored per passage under CHUNK (the first N: the text after them is not scored), so one
    # book-length passage cannot cost hundreds of windows; Cohere's max_chunks_per_doc defaults to 10.
    chunk_max_windows: int = 10  # 0 = every window
    cache_size: int = 50_000  # passage embeddings kept (bi-encoder ranking); 0 = off
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`; comma-separated for several
    api_key_file: str | None = None  # a file with one accepted key per line (added to api_key's)
    ssl_certfile: str | None = None  # serve HTTPS with this certificate chain (PEM) ...
    ssl_keyfile: str | None = None  # ... and this private key
    log_format: str = "text"  # text | json (one JSON object per line)
    warmup: bool = True
    ui: bool = True  # the playground at / and the API docs at /docs and /redoc (assets served locally)

    def api_keys(self) -> tuple[str, ...]:
        """Every accepted key: ``api_key`` split on commas, plus ``api_key_file``'s non-empty lines."""
        keys = [k.strip() for k in (self.api_key or "").split(",")]
        if self.api_key_file:
            keys += [line.strip() for line in Path(self.api_key_file).read_text(encoding="utf-8").splitlines()]
        return tuple(k for k in keys if k)

    def model_entries(self) -> list[tuple[str | None, str | None]]:
        """``model`` as (served name or None, folder or None) pairs, in order: ``PATH`` keeps its
        one-model meaning (the name then comes from ``served_model_name`` or the folder), ``NAME=PATH``
        names the model. None (no model given) is the packaged default."""
        if self.model is None:
            return [(None, None)]
        return [split_entry(raw) for raw in self.model.split(",")]

    def for_model(self, name: str | None, path: str | None) -> ServerConfig:
        """This config narrowed to one of ``model_entries``: what that model's engine loads."""
        return dataclasses.replace(
            self,
            model=path,
            served_model_name=name or (self.served_model_name if len(self.model_entries()) == 1 else None),
        )

    def model_overrides(self) -> dict[str, str]:
        """ModelSpec fields the operator set explicitly (flags beat the model's config files)."""
        names = ("rerank_template", "query_prefix", "passage_prefix")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ConfigError(f"invalid {field}={getattr(self, field)!r}: {why}")

        if self.dtype not in DTYPES:
            bad("dtype", f"choose one of {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            bad("backend", f"choose one of {', '.join(BACKENDS)}")
        if self.quantize not in QUANTIZE:
            bad("quantize", f"choose one of {', '.join(QUANTIZE)}")
        if self.cpu_gemm not in CPU_GEMMS:
            bad("cpu_gemm", f"choose one of {', '.join(CPU_GEMMS)}")
        if self.quantize != "none" and self.backend != "onnxruntime":
            bad("quantize", "int8 runs on --backend onnxruntime")
        if self.backend == "onnxruntime" and (self.device.startswith("cuda") or self.dtype not in ("auto", "float32")):
            bad("backend", "onnxruntime runs on the CPU in float32 (--device cpu|auto, --dtype auto|float32)")
        if self.backend == "openvino" and (self.device.startswith("cuda") or self.dtype == "float16"):
            bad(
                "backend",
                "openvino runs on the CPU in float32 or bfloat16 (--device cpu|auto, --dtype auto|float32|bfloat16)",
            )
        entries = self.model_entries() if self.model is not None else []
        if any(not path for _, path in entries):
            bad("model", "an empty entry: give PATH, or NAME=PATH for each of several models")
        names = [n for n, _ in entries if n]
        if len(entries) > 1 and len(names) < len(entries):
            bad("model", "with several models each needs a name: --model NAME=PATH (repeatable)")
        if len(set(names)) < len(names):
            bad("model", "two models share a name")
        if len(entries) > 1 and self.served_model_name:
            bad("served_model_name", "with several models, name each one in --model NAME=PATH instead")
        if self.truncate_default not in TRUNCATE_DEFAULTS:
            bad("truncate_default", f"choose one of {', '.join(TRUNCATE_DEFAULTS)}")
        if self.chunk_aggregate not in CHUNK_AGGREGATES:
            bad("chunk_aggregate", f"choose one of {', '.join(CHUNK_AGGREGATES)}")
        if self.chunk_max_windows < 0:
            bad("chunk_max_windows", "must be >= 0 (0 = every window)")
        if self.recipe is not None and self.recipe not in RECIPE_NAMES:
            bad("recipe", f"choose one of {', '.join(RECIPE_NAMES)}")
        if self.log_format not in LOG_FORMATS:
            bad("log_format", f"choose one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            bad("log_level", f"choose one of {', '.join(LOG_LEVELS)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "use auto, cpu, cuda or cuda:N")
        if not 0 < self.port < 65536:
            bad("port", "must be 1..65535")
        if not 0 <= self.grpc_port < 65536:
            bad("grpc_port", "must be 1..65535, or 0 for no gRPC listener")
        if self.grpc_port and self.grpc_port == self.port:
            bad("grpc_port", "must differ from port (HTTP)")
        for name in (
            "max_passages",
            "max_inputs",
            "max_queue_items",
            "max_request_bytes",
            "max_text_chars",
            "max_request_tokens",
            "max_image_bytes",
            "max_image_pixels",
            "max_request_images",
        ):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in (
            "threads",
            "max_length",
            "cache_size",
            "max_batch_tokens",
            "max_queue_tokens",
            "max_queue_requests",
            "request_timeout",
            "drain_timeout",
        ):
            if not getattr(self, name) >= 0:  # also refuses NaN
                bad(name, "must be >= 0")
        if self.max_queue_tokens and self.max_queue_tokens < self.max_request_tokens:
            bad(
                "max_queue_tokens",
                f"must be 0 or >= max_request_tokens ({self.max_request_tokens}), "
                "or a request within limits could never be admitted",
            )
        if self.api_key_file is not None:
            try:
                keys = self.api_keys()
            except (OSError, UnicodeDecodeError) as exc:
                bad("api_key_file", f"cannot read it: {exc}")
            if not keys:
                bad("api_key_file", "holds no key")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            bad("ssl_certfile", "HTTPS needs both --ssl-certfile and --ssl-keyfile")
        for name in ("ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None and not os.path.isfile(getattr(self, name)):
                bad(name, "no such file")
        if self.rerank_template is not None and not (
            "{query}" in self.rerank_template and "{passage}" in self.rerank_template
        ):
            bad("rerank_template", "must contain {query} and {passage}")
        for _, path in entries:
            problem = ref_problem(path) if path else None
            if problem:
                raise ConfigError(f"invalid model={path!r}: {problem}")
        if self.revision is not None and not self.revision.strip():
            bad("revision", "empty: give a branch, tag or commit, or leave it out for the default branch")


FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def split_entry(raw: str) -> tuple[str | None, str]:
    """One ``--model`` value: ``NAME=MODEL`` -> (NAME, MODEL); a folder or repo id alone -> (None, it).
    A name has no slash, so ``=`` inside a path or repo id is never taken for one."""
    name, sep, model = raw.strip().partition("=")
    if sep and name and "/" not in name:
        return name.strip(), model.strip()
    return None, raw.strip()


def cache_dir(*parts: str) -> Path:
    """Where rankserve keeps what it can recompute (ONNX exports, GEMM timings, evaluation
    embeddings): ``$XDG_CACHE_HOME/rankserve/...``, ``~/.cache/rankserve/...`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "rankserve", *parts)


def env_name(field: str) -> str:
    return f"RANKSERVE_{field.upper()}"


def _coerce(field: str, raw: str) -> Any:
    kind = FIELDS[field].type
    if kind in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{field} must be an integer, got {raw!r}") from None
    if kind in ("float", float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{field} must be a number, got {raw!r}") from None
    if kind in ("bool", bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{field} must be true or false, got {raw!r}")
    return raw


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) file of settings: keys are the
    field names (``max_passages`` or ``max-passages``), and a ``models`` table maps served names to
    folders (the file form of repeated ``--model NAME=PATH``)."""
    path = Path(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path}: YAML config files need PyYAML (pip install pyyaml), or use TOML") from None
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        else:
            import tomllib

            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except ConfigError:
        raise
    except Exception as exc:  # unreadable, or not valid TOML / YAML
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of settings")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "models":
            if not isinstance(value, dict) or not value:
                raise ConfigError(f'config file {path}: models must be a table of NAME = "PATH"')
            values["model"] = ",".join(f"{n}={p}" for n, p in value.items())
        elif name not in FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        else:
            values[name] = _coerce(name, value) if isinstance(value, str) else value
    if "model" in data and "models" in data:
        raise ConfigError(f"config file {path}: give model or models, not both")
    return values


def load_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    file: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Resolve every field by precedence: overrides (CLI flags) > RANKSERVE_* > NIM_* > ``file``
    (a config file's values, ``read_config_file``) > default."""
    environ = os.environ if environ is None else environ
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    for name in FIELDS:
        if name in overrides:
            values[name] = overrides[name]
        elif env_name(name) in environ:
            values[name] = _coerce(name, environ[env_name(name)])
        elif name in NIM_ENV and NIM_ENV[name] in environ:
            values[name] = _coerce(name, environ[NIM_ENV[name]])
        elif name in NIM_BIND_ADDR and NIM_BIND_ADDR[name] in environ:
            values[name] = _coerce(name, environ[NIM_BIND_ADDR[name]].rpartition(":")[2])
        elif file and name in file:
            values[name] = file[name]
    return ServerConfig(**values)
