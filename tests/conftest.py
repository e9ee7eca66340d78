"""Shared fixtures: an isolated detune home, tiny generated datasets and the real COCO128 when present."""

from __future__ import annotations

import os
import subprocess
import sys
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


_HELD_DRIVER = """
import sys
from detune import _fake
from detune.tuning import tune
result = tune(sys.argv[1], resume=len(sys.argv) > 2, fit=_fake.fit)
print(sorted(t["status"] for t in result.trials))
"""


class HeldStudy:
    """A study YAML run by a driver process with the fake trainer, every trial held after each epoch while
    ``hold`` exists: the study stays running, however fast or slow the machine is, until a test lets go."""

    def __init__(self, tmp_path: Path) -> None:
        import tempfile

        self.cwd, self.script, self.hold = tmp_path, tmp_path / "driver.py", tmp_path / "hold"
        self.script.write_text(_HELD_DRIVER)
        self.hold.touch()
        self.env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"), "PYTHONUNBUFFERED": "1",
                    "DETUNE_FAKE_HOLD": str(self.hold)}
        self.started: list[subprocess.Popen] = []

    def start(self, config: Path, experiment: Path) -> subprocess.Popen:
        """The driver, once a trial has reported into ``experiment`` (Ray's folder of the study)."""
        import time

        proc = subprocess.Popen([sys.executable, str(self.script), str(config)], env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        deadline = time.time() + 600
        while not any(f.stat().st_size for f in experiment.glob("*/result.json")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        return proc

    def resume(self, config: Path) -> subprocess.CompletedProcess:
        """Let go of the trials and run ``--resume`` of the study to its end."""
        self.hold.unlink(missing_ok=True)
        return subprocess.run([sys.executable, str(self.script), str(config), "resume"], env=self.env,
                              cwd=self.cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture
def held_study(tmp_path: Path) -> Iterator[HeldStudy]:
    held = HeldStudy(tmp_path)
    yield held
    for proc in held.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
