"""A data YAML's held-out ``test:`` split survives check_dataset and write_yaml (issue 15 section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_datasets import GOOD, write_dataset

from detune.datasets import check_dataset, has_test_split, make_shapes

WITH_TEST = {**GOOD, "test/s0": "1 0.5 0.5 0.2 0.2\n"}


def test_write_yaml_keeps_the_test_split_with_an_absolute_path(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", WITH_TEST, "train: images/train\nval: images/val\ntest: images/test\n"
                                                    "names: [a, b]\n")
    info = check_dataset(data)
    assert info.test == ((tmp_path / "d" / "images" / "test").resolve(),)
    out = yaml.safe_load(info.write_yaml(tmp_path / "out" / "resolved.yaml").read_text())
    assert out["test"] == str((tmp_path / "d" / "images" / "test").resolve())
    assert has_test_split(tmp_path / "out" / "resolved.yaml") and has_test_split(data)


def test_no_test_split_writes_none_and_says_so(tmp_path: Path) -> None:
    for text in ("train: images/train\nval: images/val\nnames: [a, b]\n",
                 "train: images/train\nval: images/val\ntest:\nnames: [a, b]\n"):
        data = write_dataset(tmp_path / "d", GOOD, text)
        info = check_dataset(data)
        assert info.test == ()
        assert "test" not in yaml.safe_load(info.write_yaml(tmp_path / "r.yaml").read_text())
        assert not has_test_split(data)


def test_a_test_split_that_does_not_exist_is_a_warning_not_an_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", GOOD, "train: images/train\nval: images/val\ntest: images/nowhere\n"
                                               "names: [a, b]\n")
    info = check_dataset(data)
    assert info.test == () and any("test" in w and "nowhere" in w for w in info.warnings)
    assert not has_test_split(data)


def test_has_test_split_takes_a_mapping_and_the_generated_shapes(tmp_path: Path) -> None:
    assert has_test_split({"train": "a", "val": "b", "test": "c"})
    assert not has_test_split({"train": "a", "val": "b", "test": ""})
    assert not has_test_split({"train": "a", "val": "b", "test": []})
    assert has_test_split(make_shapes(tmp_path / "s", n_train=4, n_val=2, imgsz=64, seed=0)) is False


def with_test_split(data_yaml: Path) -> Path:
    """A copy of a shapes data YAML whose test split is its val images (enough to exercise the scoring)."""
    raw = yaml.safe_load(data_yaml.read_text())
    out = data_yaml.with_name("data_with_test.yaml")
    out.write_text(yaml.safe_dump({**raw, "test": raw["val"]}, sort_keys=False))
    return out


def test_score_test_needs_a_test_split_and_is_refused_before_compute(tmp_path: Path) -> None:
    from detune import _fake
    from detune.config import from_dict
    from detune.errors import ConfigError
    from detune.training import run

    data = make_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=32)
    fake = _fake.Fake()
    cfg = from_dict({"data": str(data), "epochs": 1, "warmup_epochs": 0.0, "project": str(tmp_path / "p"),
                     "score_test": True, "lr0": "auto"})
    with pytest.raises(ConfigError, match=r"score_test is true but the data YAML .*data.yaml' has no test: split"):
        run(cfg, tracking=False, fit=fake)
    assert fake.configs == []  # refused before the LR finder and the training
    with pytest.raises(ConfigError, match=r"score_test \('yes'\) must be true or false"):
        from_dict({"score_test": "yes"})


def test_score_test_puts_the_held_out_scores_in_the_result(tmp_path: Path) -> None:
    from detune import _fake
    from detune.config import from_dict
    from detune.training import run

    data = with_test_split(make_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=32))
    base = {"data": str(data), "epochs": 2, "warmup_epochs": 0.0, "batch": 4, "nbs": 4, "project": str(tmp_path / "p")}
    result = run(from_dict({**base, "score_test": True}), tracking=False, fit=_fake.fit)
    assert set(result.info["test"]) == {"test/mAP50-95", "test/mAP50"}
    plain = run(from_dict({**base, "name": "plain"}), tracking=False, fit=_fake.fit)
    assert "test" not in plain.info  # scored only when asked
    from detune._progress import train_summary

    assert train_summary(result, None)[1][3].startswith("test split: mAP50 ")
    assert not any(line.startswith("test split") for line in train_summary(plain, None)[1])


def test_a_test_split_that_cannot_be_scored_warns_and_keeps_the_training(tmp_path: Path) -> None:
    from detune import _fake
    from detune.adapters.base import RunOutcome
    from detune.config import DetuneWarning, from_dict
    from detune.training import run

    def fit(cfg, data_yaml, **kw):  # a trainer whose test scoring failed (e.g. an unreadable test image)
        outcome = _fake.fit(cfg, data_yaml, **kw)
        outcome.info.pop("test", None)
        return RunOutcome(**{**outcome.__dict__, "info": {**outcome.info, "test_error": "OSError: bad image"}})

    data = with_test_split(make_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=32))
    cfg = from_dict({"data": str(data), "epochs": 2, "warmup_epochs": 0.0, "batch": 4, "nbs": 4,
                     "project": str(tmp_path / "p"), "score_test": True})
    with pytest.warns(DetuneWarning, match=r"score_test: best.pt could not be scored .*OSError: bad image.*kept"):
        result = run(cfg, tracking=False, fit=fit)
    assert result.status == "completed" and len(result.history) == 2 and "test" not in result.info


@pytest.mark.slow
def test_a_real_training_scores_its_best_weights_on_the_test_split_and_logs_it(tmp_path: Path, tiny: dict,
                                                                             shapes_yaml: Path) -> None:
    from mlflow.tracking import MlflowClient

    import detune

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = detune.train({**tiny, "data": str(with_test_split(shapes_yaml)), "epochs": 1, "score_test": True,
                           "tracking": uri})
    assert result.status == "completed", result.reason
    scores = result.info["test"]
    assert set(scores) == {"test/mAP50-95", "test/mAP50"}
    assert all(0.0 <= v <= 1.0 for v in scores.values()), scores
    assert (result.save_dir / "test").is_dir()  # Ultralytics' validator wrote into the run's own folder
    logged = MlflowClient(tracking_uri=uri).get_run(result.run_id).data.metrics
    assert logged["test/mAP50-95"] == pytest.approx(scores["test/mAP50-95"])
