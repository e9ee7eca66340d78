"""Shared fixtures: an isolated detune home, tiny generated datasets and the real COCO128 when present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO128_YAML = SHARED / "datasets" / "coco128.yaml"


@pytest.fixture(scope="session", autouse=True)
def detune_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point detune's state (private Ultralytics settings, generated data) at a temp dir for the session."""
    home = tmp_path_factory.mktemp("detune-home")
    os.environ["DETUNE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # detune.train's tracking "auto" must not log to the user's store
    return home


@pytest.fixture(scope="session")
def shapes_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated dataset: 32 train and 16 val images at 64 px."""
    from detune.datasets import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=32, n_val=16, imgsz=64, seed=0)


@pytest.fixture(scope="session")
def coco128_yaml() -> Path:
    if not COCO128_YAML.is_file():
        pytest.skip(f"real COCO128 not found at {COCO128_YAML} (../shared is absent)")
    return COCO128_YAML


@pytest.fixture
def tiny(tmp_path: Path, shapes_yaml: Path) -> dict[str, object]:
    """Settings for a fast real training on CPU (seconds per epoch)."""
    return {"model": "yolo11n.yaml", "data": str(shapes_yaml), "epochs": 2, "batch": 8, "nbs": 8, "imgsz": 64,
            "device": "cpu", "workers": 0, "plots": False, "project": str(tmp_path / "runs"), "name": "t",
            "warmup_epochs": 0.0, "mosaic": 0.0, "threads": 1}


@pytest.fixture(scope="module")
def _module_ray() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def local_ray(_module_ray: None, tmp_path: Path, shapes_yaml: Path) -> None:
    """One local Ray, started as detune starts it (loopback, token), shared by the studies of a module that
    asks for it: tune() uses a running Ray as it is, and a start and shutdown cost ~5 s a study. A later test
    that needs Ray stopped calls ray.shutdown(). Ray's memory monitor is off: other programs filling this
    machine's memory must not kill a trial (synchronous PBT then waits forever)."""
    import ray

    from detune import tuning
    from detune.study import load_study

    if not ray.is_initialized():
        study = load_study({"name": "ray", "output_dir": str(tmp_path / "ray"), "train": {"data": str(shapes_yaml)},
                            "search_space": {"lr0": {"grid": [0.01]}}, "tracking": False})
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_memory_monitor_refresh_ms", "0")
            tuning._start_ray(study, None)
