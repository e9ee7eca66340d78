"""The divergence guard: one rule (the LR finder's bias-corrected smoother and stop rule) that stops a real
divergence at once but never a healthy run whose first batch losses happen to be tiny (issue 13)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import detune
from detune._lr_suggest import LossSmoother, StopRule
from detune.adapters.ultralytics import GUARD_SMOOTHING, GUARD_WARMUP


def replay(losses: list[float], factor: float, warmup: int = GUARD_WARMUP) -> tuple[int | None, str | None]:
    """The training guard's rule over a list of batch losses: (index it stops at, reason)."""
    smoother = LossSmoother(GUARD_SMOOTHING)
    rule = StopRule(factor, warmup, early_factor=factor**2)
    for i, loss in enumerate(losses):
        reason = rule.check(i, loss, smoother.update(loss))
        if reason is not None:
            return i, reason
    return None, None


# Batch losses of a real healthy run (yolo11n, 64 px, batch 2, lr0 0.01, a third of the images without labels):
# batches with no object assigned cost ~0.17, the others 1-15, and the run starts with three cheap ones.
HEALTHY = [0.17, 0.17, 0.17, 8.97, 0.18, 6.72, 3.09, 0.33, 0.69, 0.17, 10.9, 0.17, 0.17, 0.17, 2.72, 9.11, 0.18,
           1.35, 0.19, 1.86, 1.54, 2.84, 0.71, 0.16, 14.68, 6.22, 0.16, 0.15, 0.3, 0.15, 5.78, 0.84, 1.77, 0.15,
           13.47, 0.2, 2.53, 4.67, 0.14, 0.24, 1.45, 0.15, 0.18, 0.15, 3.42, 13.07, 0.13, 11.14]
# lr0 10 (SGD) and lr0 1e3 on the same data: the loss explodes within a few steps.
EXPLODING = [[0.35, 10.51, 11.94, 18123.9, 4506.31, 6191.28, 4260.3], [10.67, 223054.3, 0.0, 0.0, 221400624.0]]


@pytest.mark.parametrize("factor", [5.0, 10.0])
def test_tiny_first_batch_losses_are_not_a_divergence(factor: float) -> None:
    # The old guard (EMA seeded with the first loss, compared with its running minimum) stopped this run at
    # batch 3 (factor 5) and batch 10 (factor 10).
    assert replay(HEALTHY, factor) == (None, None)
    assert replay(HEALTHY * 3, factor) == (None, None)


@pytest.mark.parametrize("losses", EXPLODING)
def test_an_explosion_stops_within_a_few_steps(losses: list[float]) -> None:
    index, reason = replay(losses, 10.0)
    assert index is not None and index <= 3 and "exceeded 100 x its minimum" in reason


def test_a_later_divergence_stops_on_the_plain_factor() -> None:
    losses = [*HEALTHY, *[200.0 * 1.5**k for k in range(20)]]
    index, reason = replay(losses, 10.0)
    assert index is not None and len(HEALTHY) <= index < len(HEALTHY) + 10
    assert "exceeded 10 x its minimum" in reason and "wider bar" not in reason


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_at_once_even_in_the_warmup(bad: float) -> None:
    assert replay([1.0, bad], 10.0) == (1, f"loss is {bad} at iteration 1")
    assert replay([*HEALTHY, bad], 10.0)[0] == len(HEALTHY)


@pytest.fixture
def partly_background(tmp_path: Path) -> Path:
    """48 train images at 64 px, every third one's label file emptied: background-only images."""
    from detune.datasets import make_shapes

    data = make_shapes(tmp_path / "shapes", n_train=48, n_val=8, imgsz=64, seed=0)
    labels = sorted((tmp_path / "shapes" / "labels" / "train").glob("*.txt"))
    for path in labels[::3]:
        path.write_text("")
    assert sum(p.stat().st_size == 0 for p in labels) == 16
    return data


def _train(data: Path, tmp_path: Path, **changes: object) -> detune.TrainResult:
    settings = {"model": "yolo11n.yaml", "data": str(data), "epochs": 2, "batch": 2, "nbs": 2, "imgsz": 64,
                "lr0": 0.01, "device": "cpu", "threads": 1, "warmup_epochs": 0.0, "mosaic": 0.0, "plots": False,
                "project": str(tmp_path / "runs"), "name": "t", "exist_ok": True, **changes}
    return detune.train(**settings)


@pytest.mark.slow
@pytest.mark.parametrize("factor", [5.0, 10.0])
def test_real_healthy_run_with_background_images_is_not_stopped(partly_background: Path, tmp_path: Path,
                                                                 factor: float) -> None:
    # Before the fix this run stopped as "diverged": "smoothed loss 1.107 exceeded 5 x its minimum 0.1731 at
    # epoch 1, step 4" (factor 5), "... 1.904 exceeded 10 x its minimum 0.1731 at epoch 1, step 7" (factor 10).
    result = _train(partly_background, tmp_path, divergence_factor=factor)
    assert result.status == "completed", result.reason
    assert len(result.history) == 2 and len(result.steps) == 48


@pytest.mark.slow
def test_real_absurd_lr_still_stops_at_once(partly_background: Path, tmp_path: Path) -> None:
    result = _train(partly_background, tmp_path, lr0=1e3, epochs=5, scheduler="constant")
    assert result.status == "diverged" and "epoch 1, step" in result.reason, result.reason
    assert len(result.steps) <= 5  # within a few optimizer steps, not 120

