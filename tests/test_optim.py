from __future__ import annotations

import pytest
import tf_keras

from mmentail.training.optim import make_optimizer, make_schedule


def test_warmup_then_cosine_decay():
    schedule = make_schedule(1e-3, total_steps=100, warmup_steps=10, schedule="cosine")
    assert float(schedule(0)) == pytest.approx(0)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(5e-4, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0, abs=1e-9)


def test_constant_schedule_keeps_the_rate_after_warmup():
    assert make_schedule(1e-3, total_steps=100) == 1e-3
    schedule = make_schedule(1e-3, total_steps=100, warmup_steps=10)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(50)) == pytest.approx(1e-3) == float(schedule(10_000))
    with pytest.raises(ValueError, match="lr schedule"):
        make_schedule(1e-3, total_steps=10, schedule="step")


def test_optimizers_decay_and_clipping():
    adamw = make_optimizer("adamw", 1e-3, total_steps=10, weight_decay=0.01, clipnorm=1.0)
    assert isinstance(adamw, tf_keras.optimizers.AdamW)
    assert adamw.weight_decay == 0.01 and adamw.global_clipnorm == 1.0
    adam = make_optimizer("adam", 1e-3, total_steps=10)
    assert type(adam) is tf_keras.optimizers.Adam and adam.global_clipnorm is None
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("sgd", 1e-3, total_steps=10)
