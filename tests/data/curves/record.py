"""Record the real training curves the advisor's tests replay (``tests/data/curves/*.json``).

Run once from the repo root (CPU, one thread each, ~5 min in all on a shared 2-core machine):
``PYTHONPATH=. python tests/data/curves/record.py [name ...]``. Every run trains yolo11n from its YAML (no
weights) on the generated shapes dataset of ``configs/quick.yaml`` (256 train / 64 val images at 64 px,
seed 0), batch 8 with nbs 8 (32 optimizer steps per epoch), warmup 1 epoch, mosaic off, and differs from
``healthy`` only in the settings listed in ``RUNS``. Each JSON keeps what ``detune.advice.diagnose`` reads:
the history, every step's epoch, lr/pg0, loss and loss_smooth (as columns, floats rounded to 4 significant
digits) and the config summary. Recorded on 2026-12-04 with ultralytics 8.4 and torch 2.14 (CPU).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE = {"model": "yolo11n.yaml", "epochs": 4, "batch": 8, "nbs": 8, "imgsz": 64, "device": "cpu", "workers": 0,
        "threads": 1, "seed": 0, "mosaic": 0.0, "plots": False, "lr0": 0.01, "warmup_epochs": 1.0,
        "tracking": False, "exist_ok": True}
RUNS: dict[str, dict[str, Any]] = {
    "healthy": {"epochs": 30},  # Ultralytics' defaults (SGD lr0 0.01, linear decay): mAP50-95 levels off at 0.77
    "rising": {"epochs": 12},  # the same in 12 epochs: mAP50-95 0.33 and still rising at the last epoch
    "short": {"epochs": 3},  # the same in 3 epochs: mAP50-95 still 0, too small to read a trend
    "too_high": {"lr0": 0.3, "epochs": 6},  # 30x the default: the loss jumps about
    "diverged": {"lr0": 3.0, "warmup_epochs": 0.0, "scheduler": "constant"},
    "too_low": {"lr0": 1e-4},  # 100x below the default: the loss barely moves
    "short_warmup": {"lr0": 0.05, "warmup_epochs": 0.1},  # 5x the default after a 3-step warmup
}


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def record(name: str, data: Path, project: Path) -> Path:
    import detune
    from detune.training import advice_context

    result = detune.train(data=str(data), project=str(project), name=name, **{**BASE, **RUNS[name]})
    out = {"recorded": f"tests/data/curves/record.py {name}: {RUNS[name]} over {BASE}",
           "config_summary": advice_context(result), "history": result.history, "steps": columns(result.steps)}
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(_round(out), separators=(",", ":")) + "\n")
    return path


def columns(steps: list[dict[str, float]]) -> dict[str, list[float]]:
    """Step records as columns (the tests' ``rows`` turns them back): a third of the size of the records."""
    return {k: [s.get(k, math.nan) for s in steps] for k in ("step", "epoch", "lr/pg0", "loss", "loss_smooth")}


def main(names: list[str]) -> None:
    from detune.datasets import make_shapes

    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes(Path(tmp) / "shapes", n_train=256, n_val=64, imgsz=64, seed=0)
        for name in names or list(RUNS):
            print(name, record(name, data, Path(tmp) / "runs"), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
