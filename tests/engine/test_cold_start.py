"""Start-up costs kept off the path to ready: no random init before loading weights, and a warm-up
pass sized by compute (bench/cold_start.py measures the time to ready)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from rankserve.config import load_config
from rankserve.engine import engine as engine_module
from rankserve.engine.engine import Engine
from rankserve.metrics import Metrics
from rankserve.models.loader import INIT_FUNCTIONS, load_model


def test_loading_assigns_the_checkpoint_and_leaves_torch_init_as_it_was(bert_ce_dir):
    before = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    spec = load_model(bert_ce_dir)
    assert {name: getattr(nn.init, name) for name in INIT_FUNCTIONS} == before  # restored
    state = load_file(str(bert_ce_dir / "model.safetensors"))
    params = dict(spec.module.named_parameters())
    assert not any(p.is_meta for p in params.values())
    for key, tensor in state.items():
        if key in params:
            assert torch.equal(params[key], tensor.float()), key
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)  # modules built after a load initialise as usual
    assert layer.weight.std().item() > 0 and not layer.weight.is_meta


def test_warmup_is_capped_by_compute(bert_ce_dir, monkeypatch):
    engine = Engine.load(load_config({"model": str(bert_ce_dir), "dtype": "float32"}, environ={}), Metrics())
    params = sum(p.numel() for p in engine.spec.module.parameters())
    assert engine.warmup_tokens() == min(engine.spec.max_length, engine_module.WARMUP_TOKENS)
    monkeypatch.setitem(engine_module.WARMUP_FLOPS, "cpu", 2 * params * 40)  # 40 tokens' worth
    assert engine.warmup_tokens() == min(40, engine.spec.max_length)
    monkeypatch.setitem(engine_module.WARMUP_FLOPS, "cpu", 1.0)  # a huge model: never under 16
    assert engine.warmup_tokens() == 16
