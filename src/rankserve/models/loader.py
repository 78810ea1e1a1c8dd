"""config.json -> architecture family -> a loaded model plus what the engine must know about it.

Safetensors only (never pickle) and no code from the model directory is run: ``auto_map`` and
``trust_remote_code`` entries are ignored; the architecture must be one we implement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from rankserve.errors import ModelLoadError
from rankserve.models import bert, deberta, llama, modernbert, nemotron_vl
from rankserve.models.model_dir import read_json, require_one_label, tokenizer_max
from rankserve.models.pooling import encoder_embedder
from rankserve.models.recipes import RecipeChoice, refuse_for_encoder
from rankserve.models.spec import ModelSpec, with_flags

log = logging.getLogger("rankserve")

# Checkpoint key parts that carry no weights we use when the module does not expect them: buffers,
# the BERT pooler of a bi-encoder, a decoder's LM head.
IGNORED_KEY_PARTS = frozenset({"position_ids", "inv_freq", "pooler", "lm_head"})
# Prefixes a checkpoint may put before the encoder's keys (or leave off); tried in this order.
KEY_PREFIXES = ("", "bert.", "roberta.", "model.", "encoder.")


# Pickle formats: never unpickled (loading one runs arbitrary code); named in the refusal.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files a load would read (model.safetensors, or the index's shards)."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = read_json(directory / "model.safetensors.index.json")
    if index is None:
        pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in directory.glob(pattern))
        hint = (
            (
                f" (found {', '.join(pickles)}: pickle files are never loaded because unpickling runs code; "
                "convert them to safetensors, e.g. with transformers: "
                "AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True))"
            )
            if pickles
            else ""
        )
        raise ModelLoadError(f"no model.safetensors or model.safetensors.index.json in {directory}{hint}")
    try:
        shards = sorted(set(index["weight_map"].values()))
    except (KeyError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"{directory / 'model.safetensors.index.json'} has no valid weight_map") from exc
    missing = [s for s in shards if not (directory / s).is_file()]
    if missing:
        raise ModelLoadError(
            f"weight shards named by model.safetensors.index.json are missing in {directory}: {missing}"
        )
    return [directory / s for s in shards]


INIT_FUNCTIONS = (
    "normal_",
    "uniform_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "trunc_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "zeros_",
    "ones_",
    "constant_",
)


@contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build modules on the meta device with ``torch.nn.init`` turned off: no memory and no random
    initialisation for parameters the checkpoint replaces (``fit_state`` assigns the loaded tensors).
    Why: for a 1B Llama the random init took 8.1 s of a 9.5 s load; and on the meta device alone
    ``normal_`` goes through torch's reference ops, which import torch._dynamo (+1.5 s). The same
    idea as transformers' ``no_init_weights``; the functions are restored on exit."""
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    for name in INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


# Llama, BERT, XLM-R heads: key endings (a bare out_proj is also a vision tower's attention output)
HEAD_KEYS = (("score", "weight"), ("classifier", "weight"), ("classifier", "out_proj", "weight"))


def head_labels(files: list[Path]) -> int | None:
    """How many logits the checkpoint's classification head outputs (its weight's rows, read from
    the safetensors headers only), None when it has no head. The weights decide, not ``id2label``:
    published configs disagree with their own weights (two labels listed over a one-row head)."""
    for path in files:
        try:
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    if any(tuple(key.split(".")[-len(end) :]) == end for end in HEAD_KEYS):
                        return int(f.get_slice(key).get_shape()[0])
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from exc
    return None


def load_state(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read the safetensors ``weight_files`` named: model.safetensors, or the index's shards."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from exc
    return state


# Bounds on config.json sizes, checked before any module is built: a typo or a hostile config
# (hidden_size 10**9) must be a clear error, not minutes of allocation and an OOM kill.
CONFIG_BOUNDS = {
    "num_hidden_layers": 1024,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 1 << 23,
    "max_position_embeddings": 1 << 21,
    "type_vocab_size": 1 << 10,
    "head_dim": 4096,
    "image_size": 1 << 13,
    "force_image_size": 1 << 13,
    "patch_size": 1 << 10,
    "max_input_tiles": 64,
}


MAY_BE_ZERO = frozenset({"type_vocab_size"})  # DeBERTa-v3 has no token types
NESTED_CONFIGS = ("llm_config", "vision_config")  # checked with the same bounds


def check_config_sizes(cfg: dict[str, Any], path: Path) -> None:
    for name, bound in CONFIG_BOUNDS.items():
        value = cfg.get(name)
        if value is None:
            continue
        low = 0 if name in MAY_BE_ZERO else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= bound:
            kind = "a non-negative" if low == 0 else "a positive"
            raise ModelLoadError(f"{path}: {name}={value!r} is out of range ({kind} integer <= {bound})")


def estimated_parameters(cfg: dict[str, Any]) -> int | None:
    """About how many parameters a transformer with this config has (within ~1.5x for BERT, Llama
    and Mistral shapes: embeddings, 4 h^2 attention, 2-3 h x intermediate MLP per layer); None
    when the config does not say."""
    hidden, layers = cfg.get("hidden_size"), cfg.get("num_hidden_layers")
    if not (isinstance(hidden, int) and isinstance(layers, int)):
        return None
    inter = cfg.get("intermediate_size") if isinstance(cfg.get("intermediate_size"), int) else 4 * hidden
    vocab = cfg.get("vocab_size") if isinstance(cfg.get("vocab_size"), int) else 0
    return vocab * hidden + layers * (4 * hidden * hidden + 2 * hidden * inter)


def check_weights_fit(cfg: dict[str, Any], files: list[Path]) -> None:
    """The model config.json describes must be about as big as the weight files hold.

    Checked from the config's numbers before anything is built, so a config that promises far more
    parameters than the files carry (a typo, a hostile folder) costs no memory. (A first version
    built the model on the meta device to count exactly; that pulled in torch's meta kernels and
    added 1.1 s to every start.)
    """
    params = estimated_parameters(cfg)
    on_disk = sum(f.stat().st_size for f in files)
    # >= 1 byte per parameter even for 8-bit weights, x3 for the estimate's error and absent heads.
    if params is not None and params > 3 * on_disk + (1 << 24):
        raise ModelLoadError(
            f"config.json describes about {params:,} parameters but the weight files hold only {on_disk:,} bytes "
            f"({', '.join(f.name for f in files)}): the config or the weights are wrong"
        )


def fit_state(module: nn.Module, state: dict[str, torch.Tensor], renames: dict[str, str] | None = None) -> None:
    """Strictly load ``state`` into ``module`` after the one key-mapping step, with readable errors.

    The mapping: apply explicit ``renames``, choose the prefix rewrite (strip one of KEY_PREFIXES
    from the checkpoint, add one from the module) matching most keys, then drop ignorable keys the
    module does not use.
    """
    renames = renames or {}
    state = {renames.get(k, k): v for k, v in state.items()}
    expected = set(module.state_dict().keys())
    best: dict[str, torch.Tensor] = state
    best_hits = len(expected & set(state))
    for strip in KEY_PREFIXES:
        for add in KEY_PREFIXES:
            if strip == add:
                continue
            moved = {add + k[len(strip) :]: v for k, v in state.items() if k.startswith(strip)}
            hits = len(expected & set(moved))
            if hits > best_hits:
                best, best_hits = moved, hits
    best = {k: v for k, v in best.items() if k in expected or not IGNORED_KEY_PARTS.intersection(k.split("."))}
    missing = sorted(expected - set(best))
    unexpected = sorted(set(best) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            "checkpoint keys do not match the architecture: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    for name, tensor in module.state_dict().items():
        if tensor.shape != best[name].shape:
            raise ModelLoadError(
                f"{name}: checkpoint shape {tuple(best[name].shape)} != expected {tuple(tensor.shape)}"
            )
    module.load_state_dict(best, strict=True, assign=True)  # the loaded tensors become the parameters
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:  # a tensor built in __init__ that no checkpoint key fills: a model-code bug, said plainly
        raise ModelLoadError(f"no weights for {left[:8]} after loading")


def _build_bert(directory: Path, cfg: dict[str, Any], arch: str, choice: RecipeChoice) -> dict[str, Any]:
    refuse_for_encoder(choice, arch)
    roberta = cfg.get("model_type") in ("xlm-roberta", "roberta") or arch.startswith(("XLMRoberta", "Roberta"))
    c = bert.BertConfig.from_hf(cfg, roberta=roberta)
    family = "xlm-roberta" if roberta else "bert"
    limits = [c.max_tokens, tokenizer_max(directory)]
    if arch.endswith("ForSequenceClassification"):
        require_one_label(cfg, arch)
        head = bert.XLMRobertaForSequenceClassification if roberta else bert.BertForSequenceClassification
        return dict(
            module=head(c),
            kind="cross-encoder",
            family=family,
            max_length=min(x for x in limits if x),
            pad_id=c.pad_token_id,
            pooling="cls",
            hidden_size=c.hidden_size,
            token_types=True,
        )
    return dict(
        encoder_embedder(directory, bert.BertModel(c), limits),
        family=family,
        pad_id=c.pad_token_id,
        hidden_size=c.hidden_size,
        token_types=True,
    )


# architecture name -> builder(directory, config, architecture, recipe choice) -> ModelSpec fields
ARCHITECTURES: dict[str, Callable[[Path, dict[str, Any], str, RecipeChoice], dict[str, Any]]] = {
    name: _build_bert
    for name in (
        "BertModel",
        "BertForSequenceClassification",
        "XLMRobertaModel",
        "XLMRobertaForSequenceClassification",
        "RobertaModel",
        "RobertaForSequenceClassification",
    )
}
# Llama-family decoders: NVIDIA's bidirectional retriever layouts, the plain Hugging Face classes of
# Llama, Mistral, Qwen2, Qwen3 and Gemma, and their causal LMs (yes/no rerankers through a recipe).
ARCHITECTURES.update({name: llama.build for name in llama.ARCHITECTURE_NAMES})
ARCHITECTURES.update({name: modernbert.build for name in modernbert.ARCHITECTURE_NAMES})
ARCHITECTURES.update({name: deberta.build for name in deberta.ARCHITECTURE_NAMES})
ARCHITECTURES.update({name: nemotron_vl.build for name in nemotron_vl.ARCHITECTURE_NAMES})
# config.json without ``architectures``: the base model its ``model_type`` names.
MODEL_TYPES = {
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
    "roberta": "RobertaModel",
    "llama": "LlamaModel",
    "llama_bidirec": "LlamaBidirectionalModel",
    "mistral": "MistralModel",
    "mistral_bidirec": "MistralBidirectionalModel",
    "qwen2": "Qwen2Model",
    "qwen3": "Qwen3Model",
    "gemma": "GemmaModel",
    "modernbert": "ModernBertModel",
    "deberta-v2": "DebertaV2Model",
}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the weights load in. On CPU, auto and bfloat16 load float32: the CPU runner then
    runs the blocks' products in bf16 where chosen (mixed precision, engine/backends/cpu_bf16.py)."""
    if device.type == "cpu" and dtype in ("auto", "bfloat16"):
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_length: int = 0,
    overrides: dict[str, Any] | None = None,
    choice: RecipeChoice = RecipeChoice(),
) -> ModelSpec:
    """Load a Hugging Face-style directory. ``overrides`` replace ModelSpec fields (flags win);
    ``choice`` is the operator's recipe for a decoder reranker (``models/recipes.py``)."""
    directory = Path(directory)
    cfg = read_json(directory / "config.json")
    if cfg is None:
        raise ModelLoadError(f"{directory} has no config.json")
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{directory / 'config.json'} is not a JSON object")
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None if archs else MODEL_TYPES.get(cfg.get("model_type")))
    if arch is None:
        raise ModelLoadError(
            f"unsupported architecture {archs or cfg.get('model_type')!r} in {directory}; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{directory} has no tokenizer.json (a fast tokenizer file is required)")
    check_config_sizes(cfg, directory / "config.json")
    for part in NESTED_CONFIGS:  # a VL model's language and vision halves
        if isinstance(cfg.get(part), dict):
            check_config_sizes(cfg[part], directory / "config.json" / part)
    files = weight_files(directory)
    check_weights_fit(cfg, files)
    labels = head_labels(files)
    if labels is not None:  # the head's own size replaces id2label / num_labels
        cfg = {**{k: v for k, v in cfg.items() if k not in ("id2label", "label2id")}, "num_labels": labels}
    try:
        with skip_weight_init():
            fields = ARCHITECTURES[arch](directory, cfg, arch, choice)
    except ModelLoadError:
        raise
    except (KeyError, ValueError, TypeError, ZeroDivisionError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot use {directory / 'config.json'}: {type(exc).__name__}: {exc}") from exc
    module: nn.Module = fields.pop("module")
    renames = fields.pop("renames", None)
    prepare = fields.pop("prepare_state", None)  # e.g. a recipe's LM head -> one-logit score head
    state = load_state(files)
    fit_state(module, prepare(state) if prepare else state, renames)
    module.to(device=device, dtype=dtype).eval()
    module.requires_grad_(False)
    spec = with_flags(
        ModelSpec(
            module=module,
            architecture=arch,
            tokenizer_file=tokenizer_file,
            parameters=sum(p.numel() for p in module.parameters()),
            **fields,
        ),
        max_length,
        overrides,
    )
    log.info("loaded %s (%s, %s) from %s, max_length=%d", arch, spec.family, spec.kind, directory, spec.max_length)
    return spec
