"""rankserve serve | export | rank | embed | bench | eval | data | train.  Every serve flag is also an env var (see config.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, cast

from rankserve import __version__
from rankserve.config import (
    BACKENDS,
    CHUNK_AGGREGATES,
    CPU_GEMMS,
    DTYPES,
    FIELDS,
    LOG_FORMATS,
    LOG_LEVELS,
    NIM_BIND_ADDR,
    NIM_ENV,
    QUANTIZE,
    RECIPE_NAMES,
    TRUNCATE_DEFAULTS,
    ServerConfig,
    env_name,
    load_config,
    read_config_file,
    split_entry,
)
from rankserve.errors import ConfigError, RankserveError

HELP = {
    "model": "model directory (Hugging Face layout, safetensors) or Hugging Face Hub repo id (org/name, optionally "
    "@revision; fetched into the HF cache: HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE), or NAME=MODEL, "
    "repeatable for several models in one process (requests route by their model field); default: packaged "
    "all-MiniLM-L6-v2",
    "host": "address to bind (0.0.0.0: every interface; 127.0.0.1: this machine only)",
    "port": "HTTP port (NIM's is 8000)",
    "log_level": "critical | error | warning | info | debug",
    "max_passages": "passages per ranking request; more is a 400",
    "max_inputs": "texts per embeddings request; more is a 400",
    "max_request_bytes": "bytes per request body, checked while it streams in; more is a 413",
    "truncate_default": "what ranking requests without truncate (and Cohere's rerank) get: END cuts the pair at the "
    "model's limit, NONE refuses over-long pairs (400), CHUNK scores overlapping windows of long passages",
    "chunk_aggregate": "a chunked passage's score: max (its best window's) | mean",
    "warmup": "one short and one long pass at start, before readiness (first requests then pay no kernel set-up); "
    "--no-warmup skips it",
    "revision": "Hub revision (branch, tag or commit) for a repo id given without @revision; default: main",
    "served_model_name": "model id in /v1/models and requests; default: derived from the model",
    "device": "auto | cpu | cuda | cuda:N",
    "dtype": "auto (CPU: float32, the exact path whose scores never depend on the batch; CUDA: bf16/fp16) "
    "| float32 | bfloat16 (CPU: mixed bf16, faster where the CPU has native bf16, scores move with load) "
    "| float16",
    "backend": "torch | onnxruntime (CPU, float32; int8 with --quantize; needs rankserve[onnx]) | openvino (CPU, "
    "float32 or bfloat16, the fastest where the CPU has native bf16; needs rankserve[openvino])",
    "quantize": "none | int8 (lossy: dynamic int8 weights, --backend onnxruntime only)",
    "threads": "CPU threads for the model; 0 = all cores available",
    "cpu_gemm": "fp32 linear layers on CPU: auto (time torch's default GEMM and oneDNN at start, keep the faster; "
    "timed once per machine, cached in ~/.cache/rankserve/cpu-gemm-rates.json) | torch | onednn",
    "max_length": "token limit per sequence; 0 = the model's own",
    "max_batch_tokens": "padded tokens (longest x rows) per forward pass; 0 = 4096 on CPU, 65536 on CUDA",
    "express_lane": "run small interactive requests on a second model thread beside a long pass instead of after "
    "it (CPU: torch, onnxruntime backends); --no-express-lane: one pass at a time",
    "api_key": "require 'Authorization: Bearer <key>' on API routes; several keys comma-separated",
    "api_key_file": "file with one accepted API key per line (with or instead of --api-key)",
    "max_queue_items": "pairs/texts admitted and waiting; beyond it requests get 503 + Retry-After",
    "max_queue_tokens": "tokens admitted and waiting; beyond it requests get 503; 0 = unbounded",
    "max_queue_requests": "requests admitted and waiting; beyond it requests get 503; 0 = unbounded",
    "request_timeout": "seconds a request may take before a 504 drops its queued work; 0 = none",
    "drain_timeout": "seconds SIGTERM waits for admitted requests to finish",
    "max_text_chars": "characters per text (query, passage, input); more is a 413",
    "max_request_tokens": "tokens per request after truncation; more is a 413",
    "max_image_bytes": "bytes per image passage (decoded from base64, VL rerankers); more is a 400",
    "max_request_images": "image passages per ranking request (VL rerankers); more is a 413",
    "max_image_pixels": "pixels (width x height) per image passage, checked before decoding; more is a 400",
    "ssl_certfile": "PEM certificate chain: serve HTTPS (with --ssl-keyfile)",
    "ssl_keyfile": "PEM private key for --ssl-certfile",
    "log_format": "text | json (one JSON object per line, with request ids)",
    "cache_size": "passage embeddings cached for bi-encoder ranking (an LRU); 0 = off",
    "rerank_template": "single-sequence rerank prompt with {query} and {passage} (Llama rerankers)",
    "query_prefix": "text put before queries (embeddings, bi-encoder ranking)",
    "passage_prefix": "text put before passages (embeddings, bi-encoder ranking)",
    "recipe": "decoder reranker scored by an answer token: qwen3-reranker | bge-reranker-gemma | mxbai-rerank-v2 | "
    "yes-no (with --rerank-template, --score-tokens); default: what the folder's name implies",
    "instruction": "the instruction in a recipe's prompt (qwen3-reranker's default: its model card's)",
    "score_tokens": "POSITIVE[,NEGATIVE] answer tokens for --recipe yes-no, e.g. yes,no",
    "chunk_max_windows": "windows scored per passage under truncate CHUNK (the first N); 0 = all",
    "grpc_port": "serve KServe V2 gRPC (NIM's port 8001, tritonclient) on this port too; 0 = off",
    "ui": "the playground at / and API docs at /docs, /redoc (assets served locally, no CDN); --no-ui turns them off",
}


CHOICES = {
    "recipe": RECIPE_NAMES,
    "dtype": DTYPES,
    "backend": BACKENDS,
    "quantize": QUANTIZE,
    "cpu_gemm": CPU_GEMMS,
    "log_format": LOG_FORMATS,
    "log_level": LOG_LEVELS,
    "truncate_default": TRUNCATE_DEFAULTS,
    "chunk_aggregate": CHUNK_AGGREGATES,
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field; defaults stay None so env vars can fill them."""
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        envs = env_name(name) + (f", {NIM_ENV[name]}" if name in NIM_ENV else "")
        help_ = f"{HELP.get(name, name.replace('_', ' '))} [env {envs}; default {field.default!r}]"
        if name == "model":  # repeatable: several models in one process (joined as config.model's list)
            parser.add_argument(flag, dest=name, default=None, action="append", help=help_)
        elif field.type in ("bool", bool):
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str.lower if name == "log_level" else str)
            parser.add_argument(flag, dest=name, default=None, type=kind, choices=CHOICES.get(name), help=help_)


def config_reference() -> str:
    """docs/configuration.md: every ``rankserve serve`` option with its env vars, default and help,
    read from the parser itself (HELP, config.py's fields and env names), so the flags are written
    down once. ``rankserve config-reference > docs/configuration.md`` regenerates it; a test checks
    that the committed page is current."""
    serve = serve_parser()
    lines = [
        "# Configuration reference",
        "",
        "Generated by `rankserve config-reference > docs/configuration.md` from the code (`src/rankserve/cli.py`'s",
        "help and `config.py`'s fields); do not edit by hand. Precedence: flag > `RANKSERVE_*` env var >",
        "NIM's env var > `--config FILE` > default.",
        "",
        "| flag | env vars | default | what it does |",
        "|---|---|---|---|",
    ]
    others = []
    for action in serve._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flags = ", ".join(f"`{f}`" for f in action.option_strings)
        if action.dest in FIELDS:
            names = (env_name(action.dest), NIM_ENV.get(action.dest), NIM_BIND_ADDR.get(action.dest))
            envs = ", ".join(f"`{e}`" for e in names if e)
            default = FIELDS[action.dest].default
            what = HELP[action.dest].replace("|", "\\|")
            lines.append(f"| {flags} | {envs} | `{default!r}` | {what} |")
        else:
            others.append(f"| {flags} | {(action.help or '').replace('|', chr(92) + '|')} |")
    lines += [
        "",
        "Options of `rankserve serve` that are not settings (no env var):",
        "",
        "| flag | what it does |",
        "|---|---|",
        *others,
    ]
    return "\n".join(lines) + "\n"


def serve_parser() -> argparse.ArgumentParser:
    """``rankserve serve``'s parser, as ``build_parser`` makes it (the reference reads its options)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def cmd_config_reference(args: argparse.Namespace) -> int:
    print(config_reference(), end="")
    return 0


def config_from(args: argparse.Namespace) -> ServerConfig:
    values = {name: getattr(args, name, None) for name in FIELDS}
    if isinstance(values["model"], list):
        values["model"] = ",".join(values["model"])
    path = getattr(args, "config", None)
    return load_config(values, file=read_config_file(path) if path else None)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.ray:
        from rankserve.deploy.ray_serve import Scaling, run

        config = config_from(args)
        if config.grpc_port:  # every replica would bind the same port; Ray Serve proxies HTTP only here
            raise ConfigError(
                "--grpc-port is not supported with --ray (each replica would bind it); serve "
                "gRPC from plain `rankserve serve` processes"
            )
        scaling = Scaling.parse(args.replicas, args.autoscale, args.ray_cpus, args.ray_gpus)
        return run(config, scaling, args.ray_address)
    if any(v is not None for v in (args.replicas, args.autoscale, args.ray_address, args.ray_cpus, args.ray_gpus)):
        raise ConfigError("--replicas, --autoscale, --ray-address, --ray-cpus and --ray-gpus need --ray")
    from rankserve.api.server import serve

    return serve(config_from(args))


def cmd_export(args: argparse.Namespace) -> int:
    """Export every model for its ONNX backend where ``serve`` will look (and, for openvino, compile
    it into OpenVINO's cache), then exit: run it where the cache persists (an image layer, a volume)
    so that every start reads the export without importing torch."""
    from rankserve.engine.backends import ONNX_BACKENDS, ExportRunner
    from rankserve.engine.engine import Engine
    from rankserve.metrics import Metrics

    config = config_from(args)
    if config.backend not in ONNX_BACKENDS:
        raise ConfigError(
            f"export is for --backend {' or '.join(ONNX_BACKENDS)} (the torch backend reads the "
            "safetensors folder itself)"
        )
    for entry in config.model_entries():
        # loads and exports; no warm-up pass (start() runs it)
        engine = Engine.load(config.for_model(*entry), Metrics())
        runner = cast(ExportRunner, engine.runner)  # an ONNX backend, checked above
        print(
            json.dumps(
                {
                    "model": engine.name,
                    "backend": config.backend,
                    "precision": runner.precision,
                    "export": str(runner.path.parent),
                }
            )
        )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fill the Hugging Face cache with each model (what ``serve`` will load, nothing else) and
    exit: for image builds and init containers, so that serving can start with HF_HUB_OFFLINE=1."""
    from rankserve.model_source import resolve

    for ref in args.models:
        source = resolve(split_entry(ref)[1], args.revision)
        print(json.dumps({"model": ref, **source.describe()}), flush=True)
    return 0


async def _with_engine(config: ServerConfig, work: Any) -> Any:
    from rankserve.engine.engine import Engine
    from rankserve.metrics import Metrics

    engine = await asyncio.to_thread(Engine.load, config, Metrics())
    await engine.start()
    try:
        return await work(engine)
    finally:
        await engine.stop()


def read_texts(args: argparse.Namespace, positional: list[str]) -> list[str]:
    """The positional texts, then those of ``--file`` (``-`` = stdin): JSON Lines (a string or an
    object with ``text`` per line) or plain text, one per line; blank lines are skipped."""
    texts = list(positional)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        with stream:
            for n, line in enumerate(stream, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if line.lstrip().startswith(("{", '"')):
                    try:
                        value = json.loads(line)
                    except ValueError as exc:
                        raise ConfigError(f"{args.file}:{n}: not valid JSON ({exc})") from None
                    line = value.get("text") if isinstance(value, dict) else value
                    if not isinstance(line, str):
                        raise ConfigError(f"{args.file}:{n}: expected a string or an object with a text field")
                texts.append(line)
    if not texts:
        raise ConfigError("no texts: give them as arguments or with --file (- for stdin)")
    return texts


# Texts per step of `rank` / `embed`: each step is one request (within the server's --max-passages and
# --max-inputs whatever the file's length) and one tick of the progress bar.
STEP = 256


def in_steps(texts: list[str], args: argparse.Namespace, unit: str) -> Iterator[list[str]]:
    """``texts`` in slices of STEP, with a progress bar on stderr for more than one slice (shown when
    stderr is a terminal, or always with --progress; --no-progress hides it)."""
    from tqdm import tqdm

    # disable=None is tqdm's own test: shown only when stderr is a terminal
    hidden = True if len(texts) <= STEP or args.progress is False else (False if args.progress else None)
    with tqdm(total=len(texts), unit=unit, file=sys.stderr, disable=hidden, leave=False) as bar:
        for start in range(0, len(texts), STEP):
            part = texts[start : start + STEP]
            yield part
            bar.update(len(part))
        bar.refresh()  # draw the finished count: tqdm redraws at most every 0.1 s and may have skipped it


def cmd_rank(args: argparse.Namespace) -> int:
    passages = read_texts(args, args.passages)
    scores: list[float] = []
    if args.url:
        from rankserve.client import Client

        with Client(args.url, api_key=args.api_key) as client:
            for part in in_steps(passages, args, "passages"):
                by_index = {
                    r.index: r.logit for r in client.rank(args.query, part, model=args.model, truncate=args.truncate)
                }
                scores += [by_index[i] for i in range(len(part))]
    else:

        async def work(engine: Any) -> None:
            for part in in_steps(passages, args, "passages"):
                scores.extend((await engine.rank(args.query, part, args.truncate)).scores)

        asyncio.run(
            _with_engine(
                load_config({"model": args.model, "revision": args.revision, "dtype": args.dtype, "warmup": False}),
                work,
            )
        )
    rankings = sorted(enumerate(scores), key=lambda r: -r[1])
    if args.format == "table":
        print(f"{'rank':>4}  {'logit':>10}  [index] passage")
        for rank, (i, logit) in enumerate(rankings, 1):
            print(f"{rank:>4}  {logit:>10.4f}  [{i}] {passages[i][:100]}")
    else:
        print(json.dumps({"rankings": [{"index": i, "logit": logit} for i, logit in rankings]}, indent=2))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    texts = read_texts(args, args.texts)
    vectors: list[list[float]] = []
    if args.url:
        from rankserve.client import Client

        with Client(args.url, api_key=args.api_key) as client:
            for part in in_steps(texts, args, "texts"):
                vectors += client.embed(
                    part,
                    input_type=args.input_type,
                    dimensions=args.dimensions,
                    model=args.model,
                    truncate=args.truncate,
                )
    else:

        async def work(engine: Any) -> None:
            for part in in_steps(texts, args, "texts"):
                result = await engine.embed(part, args.input_type, args.truncate, args.dimensions)
                vectors.extend(result.vectors.tolist())

        asyncio.run(
            _with_engine(
                load_config({"model": args.model, "revision": args.revision, "dtype": args.dtype, "warmup": False}),
                work,
            )
        )
    print(json.dumps({"embeddings": vectors}))
    return 0


def add_offline_flags(parser: argparse.ArgumentParser) -> None:
    """What ``rank`` and ``embed`` share: the model, the input file, and a server to ask instead."""
    parser.add_argument(
        "--model", default=None, help="model folder or Hub repo id (in-process), or the served model id (with --url)"
    )
    parser.add_argument("--revision", default=None, help=HELP["revision"])
    parser.add_argument("--file", default=None, help="more texts, one per line or JSON Lines; - reads stdin")
    parser.add_argument(
        "--url", default=None, help="ask this rankserve / NIM-compatible server instead of loading the model here"
    )
    parser.add_argument("--api-key", default=None, help="bearer key for --url")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help=HELP["dtype"])
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr for more than {STEP} texts (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankserve", description="Reranking and embedding service (NIM-compatible)")
    parser.add_argument("--version", action="version", version=f"rankserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    add_config_flags(serve)
    ray = serve.add_argument_group("Ray Serve (pip install 'rankserve[ray]')")
    ray.add_argument(
        "--ray", action="store_true", help="serve through Ray Serve replicas (a local cluster unless --ray-address)"
    )
    ray.add_argument("--replicas", type=int, default=None, help="fixed number of replicas (default 1)")
    ray.add_argument(
        "--autoscale",
        default=None,
        metavar="MIN:MAX",
        help="autoscale between MIN and MAX replicas on ongoing requests per replica",
    )
    ray.add_argument("--ray-address", default=None, help="join this Ray cluster (e.g. auto, ray://head:10001)")
    ray.add_argument("--ray-cpus", type=float, default=None, help="CPUs each replica reserves (default 1)")
    ray.add_argument("--ray-gpus", type=float, default=None, help="GPUs each replica reserves (default 0)")
    serve.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="settings from a TOML or YAML file (field names as keys, a [models] table of "
        "NAME = PATH); flags and env vars override it",
    )
    serve.set_defaults(func=cmd_serve)

    reference = sub.add_parser("config-reference", help="print every serve option as Markdown (docs/configuration.md)")
    reference.set_defaults(func=cmd_config_reference)

    export = sub.add_parser(
        "export",
        help="export the model(s) to ONNX for --backend onnxruntime|openvino into the "
        "cache serve reads (run once where the cache persists), then exit",
    )
    add_config_flags(export)
    export.add_argument(
        "--config", default=None, metavar="FILE", help="settings from a TOML or YAML file, as for serve"
    )
    export.set_defaults(func=cmd_export)

    download = sub.add_parser(
        "download",
        help="fetch Hub models into the Hugging Face cache (only what serve loads: "
        "configs, tokenizer, safetensors), print where, and exit",
    )
    download.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="repo id (org/name, optionally @revision), or NAME=MODEL as --model takes it",
    )
    download.add_argument("--revision", default=None, help=HELP["revision"])
    download.set_defaults(func=cmd_download)

    rank = sub.add_parser("rank", help="rank passages for a query (in-process, or --url) and print the rankings")
    rank.add_argument("query")
    rank.add_argument("passages", nargs="*")
    add_offline_flags(rank)
    rank.add_argument("--truncate", choices=TRUNCATE_DEFAULTS, default="END")
    rank.add_argument("--format", choices=("json", "table"), default="json")
    rank.set_defaults(func=cmd_rank)

    embed = sub.add_parser("embed", help="embed texts (in-process, or --url) and print the vectors as JSON")
    embed.add_argument("texts", nargs="*")
    add_offline_flags(embed)
    embed.add_argument("--input-type", choices=("query", "passage"), default=None)
    embed.add_argument("--truncate", choices=("NONE", "START", "END"), default="END")
    embed.add_argument("--dimensions", type=int, default=None)
    embed.set_defaults(func=cmd_embed)

    from rankserve.eval.commands import add_commands as add_eval
    from rankserve.loadgen import add_command as add_bench
    from rankserve.train.commands import add_command as add_train

    add_eval(sub)
    add_train(sub)
    add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RankserveError as exc:
        print(f"rankserve: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
