from __future__ import annotations

import math

import pytest
import torch

from robustar_ls.config import TrainConfig
from robustar_ls.train import loop
from robustar_ls.train.loop import lr_factor, make_optimizer


def test_cosine_without_warmup_starts_at_one_and_ends_at_zero():
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert lr_factor(100, 100) == pytest.approx(0.0)
    assert lr_factor(250, 100) == pytest.approx(0.0)  # past the end: stays at 0


def test_warmup_rises_linearly_then_decays_from_one():
    factors = [lr_factor(step, 100, warmup=10) for step in range(101)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0 and factors[100] == pytest.approx(0.0)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_make_optimizer_reads_the_warmup_fraction(monkeypatch):
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.1)
    monkeypatch.setattr(loop, "WARMUP_FRACTION", 0.1)
    optimizer, _ = make_optimizer(model, cfg, steps=50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 1 / 5)  # step 0 of 5
    monkeypatch.setattr(loop, "WARMUP_FRACTION", 0.0)
    optimizer, _ = make_optimizer(model, cfg, steps=50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
