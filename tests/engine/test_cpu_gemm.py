"""engine/backends/cpu_gemm.py: the linear layers' CPU library is swapped in place, chosen by measurement,
and changes nothing a checkpoint or an export sees."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankserve.engine.backends import cpu_gemm
from rankserve.engine.backends.cpu_gemm import OneDnnLinear, onednn_available, use_cpu_gemm
from rankserve.models.loader import load_model

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear kernel")


def linear_classes(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.Linear)}


@needs_onednn
def test_swap_keeps_parameters_and_names(bert_ce_dir):
    spec = load_model(bert_ce_dir)
    before = {k: v.data_ptr() for k, v in spec.module.state_dict().items()}
    assert use_cpu_gemm(spec.module, "onednn") == "onednn"
    assert linear_classes(spec.module) == {OneDnnLinear}
    assert {k: v.data_ptr() for k, v in spec.module.state_dict().items()} == before  # same tensors, no copy
    assert use_cpu_gemm(spec.module, "torch") == "torch"
    assert linear_classes(spec.module) == {cpu_gemm.TorchLinear}


@needs_onednn
def test_onednn_linear_matches_f_linear_and_falls_back_off_float32():
    torch.manual_seed(0)
    layer = nn.Linear(48, 96)
    layer.__class__ = OneDnnLinear
    x = torch.randn(37, 48)
    with torch.inference_mode():
        assert (layer(x) - nn.functional.linear(x, layer.weight, layer.bias)).abs().max().item() <= 1e-5
        layer.to(torch.bfloat16)
        got = layer(x.bfloat16())
    assert got.dtype == torch.bfloat16  # F.linear's path: oneDNN here is only fp32


@pytest.mark.parametrize(
    "rates, chosen",
    [
        ({"torch": 180.0, "onednn": 470.0}, "onednn"),
        ({"torch": 200.0, "onednn": 210.0}, "torch"),  # within the margin
        ({"torch": 300.0, "onednn": 150.0}, "torch"),
    ],
)
def test_auto_keeps_the_faster_library(bert_ce_dir, monkeypatch, rates, chosen):
    if chosen == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    measured = []
    monkeypatch.setattr(
        cpu_gemm, "measured_rates", lambda weight, kernels: measured.append(tuple(weight.shape)) or rates
    )
    spec = load_model(bert_ce_dir)
    assert use_cpu_gemm(spec.module, "auto") == chosen
    assert linear_classes(spec.module) == {OneDnnLinear if chosen == "onednn" else cpu_gemm.TorchLinear}
    widest = max((m.weight for m in spec.module.modules() if isinstance(m, nn.Linear)), key=torch.numel)
    assert measured == [tuple(widest.shape)]  # timed once, on the model's widest layer


@needs_onednn
def test_gemm_rates_measures_both_libraries():
    rates = cpu_gemm.gemm_rates(torch.randn(64, 32), rows=16, repeats=2)
    assert set(rates) == {"torch", "onednn"} and all(r > 0 for r in rates.values())


def test_other_dtypes_are_left_alone(bert_ce_dir):
    spec = load_model(bert_ce_dir)
    spec.module.to(torch.bfloat16)
    assert use_cpu_gemm(spec.module, "onednn") == "torch"
    assert linear_classes(spec.module) == {nn.Linear}


def test_unknown_choice_is_refused(bert_ce_dir):
    with pytest.raises(ValueError, match="cpu_gemm"):
        use_cpu_gemm(load_model(bert_ce_dir).module, "blas")


def test_without_onednn_auto_keeps_torch_and_onednn_is_a_config_error(bert_ce_dir, monkeypatch):
    from rankserve.errors import ConfigError

    monkeypatch.setattr(cpu_gemm, "onednn_available", lambda: False)
    spec = load_model(bert_ce_dir)
    assert use_cpu_gemm(spec.module, "auto") == "torch"
    with pytest.raises(ConfigError, match="no oneDNN"):
        use_cpu_gemm(spec.module, "onednn")
    assert linear_classes(spec.module) == {cpu_gemm.TorchLinear}


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear kernel")
def test_onednn_rows_are_bucketed_and_the_result_is_unchanged(monkeypatch):
    """Row counts are rounded up to ROW_BUCKET before oneDNN (a bounded set of kernel shapes, so
    memory stays bounded under varied traffic); the padded rows never reach the output."""
    from rankserve.engine.backends import cpu_gemm

    shapes = []
    real = cpu_gemm.onednn_linear
    monkeypatch.setattr(cpu_gemm, "onednn_linear", lambda x, w, b: shapes.append(tuple(x.shape)) or real(x, w, b))
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    fast = nn.Linear(24, 40)
    fast.load_state_dict(layer.state_dict())
    fast.__class__ = cpu_gemm.OneDnnLinear
    with torch.inference_mode():
        for rows in range(1, 200):
            x = torch.randn(rows, 24)
            out = fast(x)
            assert out.shape == (rows, 40)
            torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)
    assert sorted({s[0] for s in shapes}) == [64, 128, 192, 256]
