"""Real trainings on CPU through ``detune.train`` (tiny images, 1-2 epochs)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import detune
from detune.errors import ConfigError, DatasetError
from detune.training import CANONICAL_KEYS

pytestmark = pytest.mark.slow


def test_train_two_epochs_completes_with_canonical_history(tiny: dict) -> None:
    result = detune.train(**{**tiny, "lr0": 0.02, "optimizer": "SGD", "scheduler": "constant"})
    assert result.status == "completed", result.reason
    assert [h["epoch"] for h in result.history] == [1, 2]
    for record in result.history:
        assert set(CANONICAL_KEYS) <= set(record), set(CANONICAL_KEYS) - set(record)
        assert all("(" not in k for k in record)
        assert record["lr/pg0"] == pytest.approx(0.02, rel=1e-12)  # constant schedule, no warmup
    assert result.weights["best"].is_file() and result.weights["last"].is_file()
    assert result.best_epoch in (1, 2) and "metrics/mAP50-95" in result.best
    assert result.config["lr0"] == 0.02 and result.config["scheduler"] == "constant"
    # one entry per optimizer step: 32 images / batch 8 = 4 steps per epoch
    assert len(result.steps) == 8 and {s["epoch"] for s in result.steps} == {0, 1}


def test_history_lr_is_last_step_of_epoch_under_default_linear_schedule(tiny: dict) -> None:
    result = detune.train(**{**tiny, "lr0": 0.02})
    assert result.status == "completed", result.reason
    for record in result.history:
        last = [s for s in result.steps if s["epoch"] == record["epoch"] - 1][-1]
        assert record["lr/pg0"] == pytest.approx(last["lr/pg0"], rel=1e-12)
        assert 0.02 * 0.01 <= record["lr/pg0"] < 0.02


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"lr0": -1.0}, ConfigError, r"lr0 \(-1.0\) must be > 0"),
        ({"lr_zero": 0.1}, ConfigError, r"unknown setting 'lr_zero'"),
        ({"data": "no/such/data.yaml"}, DatasetError, r"no/such/data.yaml"),
    ],
)
def test_bad_input_raises_before_training(tiny: dict, bad: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        detune.train(**{**tiny, **bad})
    assert not Path(tiny["project"]).exists()  # nothing was trained


def test_train_on_real_coco128_slice(tmp_path: Path, coco128_yaml: Path) -> None:
    result = detune.train(model="yolo11n.yaml", data=str(coco128_yaml), epochs=1, batch=8, nbs=8, imgsz=64,
                          fraction=0.125, device="cpu", warmup_epochs=0.0, plots=False,
                          project=str(tmp_path), name="coco", lr0=0.01)
    assert result.status == "completed", result.reason
    assert result.info["dataset"]["data.nc"] == 80
    assert math.isfinite(result.history[0]["train/box_loss"])


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []

    def _blocked(host):
        return not (str(host).startswith("127.") or str(host) in ("localhost", "::1", "") or str(host).startswith("/"))

    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if _blocked(host):
            attempts.append(("connect", str(host)))
            raise OSError("network blocked by test")
        return _connect(self, address)

    def connect_ex(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if _blocked(host):
            attempts.append(("connect_ex", str(host)))
            return 101
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if _blocked(host):
            attempts.append(("dns", str(host)))
            raise socket.gaierror("DNS blocked by test")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket.gethostbyname = lambda host: getaddrinfo(host, 0)[0][4][0]
    socket.create_connection.__defaults__  # keep the name used

    import detune
    result = detune.train(model="yolo11n.yaml", data=sys.argv[1], epochs=1, batch=8, nbs=8, imgsz=64,
                          device="cpu", warmup_epochs=0.0, plots=True, project=sys.argv[2], name="offline")
    print(json.dumps({"status": result.status, "reason": result.reason, "attempts": attempts,
                      "save_dir": str(result.save_dir)}))
    """
)


def test_training_is_offline_quiet_and_leaves_user_settings_alone(tmp_path: Path, shapes_yaml: Path) -> None:
    """Every non-loopback connection and DNS lookup is blocked and recorded; training must still complete,
    make no attempt at all, print nothing but our JSON, render its plots, and write nothing to $HOME."""
    import json
    import os

    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "offline.py"
    script.write_text(OFFLINE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "MLFLOW_", "RAY_"))}
    env.update(HOME=str(home), DETUNE_HOME=str(tmp_path / "detune-home"), XDG_CONFIG_HOME=str(home / ".config"))
    out = subprocess.run([sys.executable, str(script), str(shapes_yaml), str(tmp_path / "runs")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == "completed", report["reason"]
    assert report["attempts"] == []
    assert out.stdout.strip().count("\n") == 0, out.stdout  # quiet: nothing else on stdout
    assert list(home.iterdir()) == []  # no ~/.config/Ultralytics, no ~/.cache, nothing
    assert any(Path(report["save_dir"]).glob("*.png")), "plots were not rendered"


def test_fewer_optimizer_steps_than_epochs_warns_and_reports_no_invented_lr(tmp_path: Path, tiny: dict) -> None:
    """16 images, batch 8, nbs 64: one optimizer step in three epochs (Ultralytics caps accumulate at the 6
    batches of the run). detune warns before training, with the numbers and the fix, and an epoch without an
    optimizer step has lr NaN in its history, never a value the step schedule (0.04 x 0.5^k) did not have."""
    from detune.config import DetuneWarning
    from detune.datasets import make_shapes

    data = make_shapes(tmp_path / "shapes16", n_train=16, n_val=8, imgsz=64, seed=0)
    settings = {**tiny, "data": str(data), "epochs": 3, "nbs": 64, "lr0": 0.04, "scheduler": "step",
                "scheduler_params": {"step_size": 1, "gamma": 0.5}}
    with pytest.warns(DetuneWarning, match=r"16 train images.*batch 8.*nbs 64.*set nbs=8") as caught:
        result = detune.train(**settings)
    assert result.status == "completed", result.reason
    assert len([w for w in caught if issubclass(w.category, DetuneWarning) and "nbs" in str(w.message)]) == 1
    assert len(result.steps) == 1  # the warning told the truth
    stepped = {int(s["epoch"]) + 1: s for s in result.steps}
    schedule_values = [0.04 * 0.5**k for k in range(8)]
    for record in result.history:
        for group in ("lr/pg0", "lr/pg1", "lr/pg2"):
            if record["epoch"] in stepped:
                assert record[group] == pytest.approx(stepped[record["epoch"]][group], rel=1e-12)
            else:
                assert math.isnan(record[group]), (record["epoch"], group, record[group])
        if math.isfinite(record["lr/pg0"]):
            assert any(record["lr/pg0"] == pytest.approx(v, rel=1e-9) for v in schedule_values), record["lr/pg0"]
    assert sum(math.isnan(r["lr/pg0"]) for r in result.history) == 2
    assert result.info["steps_per_epoch"] < 1


def test_one_optimizer_step_per_epoch_or_more_does_not_warn(tiny: dict) -> None:
    import warnings

    from detune.config import DetuneWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DetuneWarning)
        result = detune.train(**{**tiny, "epochs": 1, "lr0": 0.02})
    assert result.status == "completed", result.reason
    assert all(math.isfinite(r["lr/pg0"]) for r in result.history)


def test_unreadable_images_are_reported_as_dropped_in_result_and_summary(tmp_path: Path, tiny: dict) -> None:
    """A 0-byte image and a JPEG of garbage (plain Ultralytics skips both, blaming a missing pi_heif) and every
    image reachable twice: detune trains on the 16 real images once each; the result and the summary say
    which images were left out."""
    from detune._progress import train_summary
    from detune.datasets import make_shapes

    data = make_shapes(tmp_path / "shapes16", n_train=16, n_val=8, imgsz=64, seed=0)
    train_dir = data.parent / "images" / "train"
    (train_dir / "zero.jpg").write_bytes(b"")
    (train_dir / "junk.jpg").write_bytes(b"\xff\xd8 not a JPEG at all" * 50)
    for image in sorted(train_dir.glob("train_*.png")):  # the 16 real images, each reachable a second time
        (train_dir / f"again-{image.name}").symlink_to(image)
    result = detune.train(**{**tiny, "data": str(data), "epochs": 1, "lr0": 0.02})
    assert result.status == "completed", result.reason
    assert sorted(Path(p).name for p in result.info["dropped_images"]["train"]) == ["junk.jpg", "zero.jpg"]
    assert result.info["dropped_images"]["val"] == []
    assert result.info["train_images"] == 16  # what Ultralytics really trained on
    assert result.info["dataset"]["data.train_images"] == 16
    data_out, lines = train_summary(result, None)
    line = next(x for x in lines if x.startswith("dropped images"))
    assert "2 train images" in line and "junk.jpg" in line and "zero.jpg" in line
    assert data_out["dropped_images"] == result.info["dropped_images"]
