import math

import pytest

from common.config import ScheduleConfig
from common.schedule import lr_at, lr_curve


def test_cosine_with_warmup_hand_computed():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    # 2 epochs x 4 steps, 4 warm-up steps: 0.25, 0.5, 0.75, 1.0 then cosine over the remaining 4 steps.
    curve = lr_curve(8, 4, 1.0, cfg)
    assert curve[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert curve[4] == pytest.approx(1.0)
    assert curve[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert curve[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_cosine_reaches_min_lr_at_the_end():
    cfg = ScheduleConfig(name="cosine", min_lr=0.1)
    assert lr_at(0, 10, 5, 1.0, cfg) == pytest.approx(1.0)
    assert lr_at(10, 10, 5, 1.0, cfg) == pytest.approx(0.1)


def test_step_decay_at_epoch_milestones():
    cfg = ScheduleConfig(name="step", milestones=(2, 4), gamma=0.1)
    lrs = [lr_at(s, 60, 10, 0.5, cfg) for s in (0, 19, 20, 39, 40, 59)]
    assert lrs == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005, 0.005])


def test_constant():
    assert set(lr_curve(5, 5, 0.3, ScheduleConfig(name="constant"))) == {0.3}
