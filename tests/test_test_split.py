"""A data YAML's held-out ``test:`` split survives check_dataset and write_yaml (issue 15 section 2)."""

from __future__ import annotations

from pathlib import Path

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
