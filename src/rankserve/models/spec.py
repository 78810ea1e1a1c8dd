"""``ModelSpec``: a loaded model plus the facts the engine needs to feed it, without torch.

Kept apart from ``loader.py`` (which builds torch modules) so that the engine can hold a spec whose
model runs elsewhere: the ONNX Runtime and OpenVINO backends restore a cached export's spec from
JSON (``to_json`` / ``from_json``) and start without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from rankserve.models.nemotron_vl import VisionInput

Kind = Literal["cross-encoder", "embedder"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A loaded model and the facts the engine needs to feed it."""

    # Packed -> [B, 1] logits (cross-encoder) or [B, H] vectors (embedder); None when the model runs
    # as a cached ONNX export (the engine never touches the module then).
    module: nn.Module | None
    kind: Kind
    family: str  # bert | xlm-roberta | llama | mistral | qwen2 | qwen3 | gemma | modernbert | deberta | nemotron-vl
    architecture: str
    tokenizer_file: Path
    max_length: int  # tokens per sequence, special tokens included
    pad_id: int
    pooling: str = "cls"
    # The model adds token type embeddings: the tokenizer's pair type ids (0 query, 1 passage) are
    # fed to it, by the torch and the ONNX backends alike. Set by the family's builder.
    token_types: bool = False
    normalize: bool = True  # embedders: L2-normalize outputs
    # Rerankers whose input is one templated sequence (NVIDIA Llama rerankers); None = the
    # tokenizer's own pair encoding ([CLS] q [SEP] p [SEP]).
    rerank_template: str | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    temperature: float = 1.0
    dimensions: tuple[int, ...] | None = None  # Matryoshka sizes the model supports; None = any <= hidden
    hidden_size: int = 0
    parameters: int = 0  # the module's parameter count (sizes the warm-up pass)
    extra: dict[str, Any] = field(default_factory=dict)
    vision: VisionInput | None = None  # VL models: how image passages become tokens and tiles


def with_flags(spec: ModelSpec, max_length: int = 0, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The operator's flags over the model's own values: ``max_length`` (0 = the model's) and
    ``overrides`` of ModelSpec fields (rerank template, prefixes)."""
    changes = dict(overrides or {})
    if max_length:
        changes["max_length"] = max_length
    return dataclasses.replace(spec, **changes) if changes else spec


# Fields a JSON copy leaves out: the module (the export holds the weights) and the VL input (VL
# models run on torch only).
NOT_SAVED = ("module", "vision")


def to_json(spec: ModelSpec) -> str:
    """A text model's spec without its module, for a cache next to its exported graph."""
    if spec.vision is not None:
        raise ValueError("a VL model's spec is not saved: it runs on torch only")
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in NOT_SAVED}
    values["tokenizer_file"] = str(spec.tokenizer_file)
    return json.dumps(values, indent=1)


def from_json(text: str) -> ModelSpec:
    """``to_json``'s inverse, with no module (a cached export runs the model)."""
    values = json.loads(text)
    values["tokenizer_file"] = Path(values["tokenizer_file"])
    # saved before the field existed: the rule the exporter had then
    values.setdefault("token_types", values["family"] in ("bert", "xlm-roberta"))
    if values.get("dimensions") is not None:
        values["dimensions"] = tuple(values["dimensions"])
    return ModelSpec(module=None, **values)
