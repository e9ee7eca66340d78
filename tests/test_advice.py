"""The training-health advisor (``detune.advice``): every rule on real recorded curves and on edge cases, and
the advice reaching ``result.info``, advice.json, the ``detune train`` summary, MLflow and the study report.

The curves under ``tests/data/curves/`` are real trainings recorded once by ``tests/data/curves/record.py``
(its docstring says how: yolo11n from scratch on 256 generated shapes images at 64 px, batch 8, SGD, 32
optimizer steps per epoch, one run per case: ``healthy`` 30 epochs at lr0 0.01, ``rising`` the same in 12
epochs, ``short`` 3 epochs, ``too_low`` lr0 1e-4, ``too_high`` lr0 0.3, ``short_warmup`` lr0 0.05 after a
3-step warmup, ``diverged`` lr0 3 without warmup). The thresholds in ``detune.advice`` were measured on them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from detune import advice
from detune.advice import Advice, diagnose

CURVES = Path(__file__).parent / "data" / "curves"
HEALTHY_ISH = ("healthy", "rising", "short", "too_low", "short_warmup")  # runs whose batch loss does not jump


def load(name: str) -> tuple[list[dict[str, float]], list[dict[str, float]], dict[str, Any]]:
    """(history, steps, config_summary) of a recorded curve; its steps are stored as columns."""
    data = json.loads((CURVES / f"{name}.json").read_text())
    columns = data["steps"]
    steps = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return data["history"], steps, data["config_summary"]


def run(name: str) -> list[Advice]:
    history, steps, ctx = load(name)
    return diagnose(history, steps, config_summary=ctx)


def check(rule: str, name: str) -> advice.Check:
    history, steps, ctx = load(name)
    found = advice.RULES[rule](history, steps, ctx)
    assert found is not None, f"{rule} had no data on {name}"
    return found


# ---- the recorded curves: what each run is told --------------------------------------------------------
def test_the_healthy_run_says_so_with_the_numbers_it_checked() -> None:
    (found,) = run("healthy")
    assert found.rule == "healthy" and found.change is None
    for text in ("1.47x its running median (limit 2x)", "val loss <= 1.09e+03x train loss (limit 1e+06x)",
                 "train loss -14.4%/epoch over epochs 1-4 (limit -6%)", "1.01x its value at its end (limit 1.5x)",
                 "0% above its lowest (epoch 30; limit 10%)", "mAP50-95 -0.1% of its best/epoch over the last 3"):
        assert text in found.message, found.message
    assert set(found.evidence) == {"loss_jumps", "slow_progress", "warmup_spike", "overfitting",
                                   "schedule_too_short"}


def test_a_run_whose_metric_still_rises_is_told_to_train_longer() -> None:
    (found,) = run("rising")  # 12 epochs: mAP50-95 0.334; the same settings for 30 epochs reached 0.765
    assert found.rule == "schedule_too_short" and found.change == {"epochs": 24}
    assert "0.266 -> 0.334 over the last 3 epochs, +10.2% of its best per epoch; limit 3%" in found.message
    assert "epochs 24" in found.message and found.evidence["last"] == pytest.approx(0.3337)


def test_a_too_low_lr_is_told_to_raise_it() -> None:
    (found,) = run("too_low")
    assert found.rule == "slow_progress" and found.change == {"lr0": 0.001}
    for text in ("3.5% per epoch over epochs 1-4", "(14 -> 12.5; limit 6%)", "at lr0 0.0001",
                 "Ultralytics' default 0.01", "raise lr0 to 0.001"):
        assert text in found.message, found.message


def test_a_too_high_lr_is_told_to_lower_it() -> None:
    found = {a.rule: a for a in run("too_high")}
    jumps = found["loss_jumps"]
    assert jumps.change == {"lr0": 0.1}  # lr0 0.3 / 3
    assert "validation loss zero or not finite at epoch 2" in jumps.message
    assert "lower lr0 3x, to 0.1" in jumps.message
    # its mAP50-95 was still climbing once the lr had decayed: 0.0019 -> 0.0276 over the last 3 epochs
    assert "0.00185 -> 0.0276" in found["schedule_too_short"].message


def test_a_diverged_run_gets_the_lr_it_diverged_at_and_a_safe_lr0() -> None:
    (found,) = run("diverged")
    assert found.rule == "diverged" and found.change == {"lr0": 0.3}
    assert "diverged at epoch 3, step 88 at lr 3" in found.message
    assert "a safe lr0 is 0.3, 10x below it" in found.message
    assert "smoothed loss 118.5 exceeded 10 x its minimum" in found.message  # the guard's own reason


@pytest.mark.parametrize("name", ["short", "short_warmup"])
def test_runs_without_a_measurable_problem_are_healthy(name: str) -> None:
    (found,) = run(name)
    assert found.rule == "healthy", found.message


# ---- the thresholds separate the recorded runs, with margin -------------------------------------------
@pytest.mark.parametrize("name", HEALTHY_ISH + ("too_high",))
def test_batch_loss_jumps_stay_well_under_the_limit_unless_diverged(name: str) -> None:
    assert check("loss_jumps", name).value < advice.JUMP_RATIO / 1.1
    assert check("loss_jumps", "diverged").value > 1000 * advice.JUMP_RATIO


def test_the_slow_progress_limit_sits_between_too_low_and_the_rest() -> None:
    assert check("slow_progress", "too_low").value < advice.SLOW_DROP / 1.5
    for name in ("healthy", "rising", "short", "too_high", "short_warmup"):
        assert check("slow_progress", name).value > advice.SLOW_DROP * 1.5, name


@pytest.mark.parametrize("name", HEALTHY_ISH + ("too_high",))
def test_no_recorded_run_spikes_after_its_warmup(name: str) -> None:
    assert check("warmup_spike", name).value < advice.WARMUP_SPIKE / 1.3


def test_the_rising_limit_sits_between_the_levelled_and_the_rising_runs() -> None:
    assert check("schedule_too_short", "healthy").value < advice.RISE_SLOPE / 2
    assert check("schedule_too_short", "rising").value > advice.RISE_SLOPE * 3


# ---- edge cases ------------------------------------------------------------------------------------------
CTX = {"lr0": 0.01, "reference_lr0": 0.01, "epochs": 10, "warmup_epochs": 1.0, "warmup_steps": 20,
       "steps_per_epoch": 20, "status": "completed", "reason": None}


def epochs(train: list[float], val: list[float] | None = None, metric: list[float] | None = None,
           ) -> list[dict[str, float]]:
    """History records whose box + cls + dfl losses sum to ``train`` / ``val``."""
    val = val or [3.0] * len(train)
    metric = metric or [0.0] * len(train)
    return [{"epoch": i + 1, **{f"train/{k}_loss": t / 3 for k in ("box", "cls", "dfl")},
             **{f"val/{k}_loss": v / 3 for k in ("box", "cls", "dfl")}, "metrics/mAP50-95": m}
            for i, (t, v, m) in enumerate(zip(train, val, metric, strict=True))]


def steps_of(losses: list[float], lr: float = 0.01, per_epoch: int = 20) -> list[dict[str, float]]:
    smooth, out = advice_smoother(losses), []
    for i, (loss, s) in enumerate(zip(losses, smooth, strict=True)):
        out.append({"step": i, "epoch": i // per_epoch, "lr/pg0": lr, "loss": loss, "loss_smooth": s})
    return out


def advice_smoother(losses: list[float]) -> list[float]:
    from detune._lr_suggest import LossSmoother

    smoother = LossSmoother(0.05)
    return [smoother.update(x) for x in losses]


def test_nothing_to_read_is_undiagnosed_not_healthy() -> None:
    (found,) = diagnose([], [], config_summary={})
    assert found.rule == "undiagnosed" and "0 epochs, 0 step losses" in found.message
    (one,) = diagnose(epochs([9.0]), [], config_summary=CTX)
    assert one.rule == "healthy" and one.message == "healthy: val loss <= 0.333x train loss (limit 1e+06x)"


def test_a_nan_step_loss_is_a_divergence_even_with_the_guard_off() -> None:
    losses = [5.0] * 30 + [math.nan]
    (found,) = diagnose(epochs([9.0, 8.0]), steps_of(losses, lr=0.2), config_summary=CTX)
    assert found.rule == "diverged" and "diverged at epoch 2, step 30 at lr 0.2" in found.message
    assert found.change == {"lr0": 0.001}  # min(lr 0.2, lr0 0.01) / 10


def test_a_divergence_without_steps_falls_back_to_lr0() -> None:
    ctx = {**CTX, "status": "diverged", "reason": "loss is nan at epoch 1, step 0", "lr0": 0.5}
    (found,) = diagnose([], [], config_summary=ctx)
    assert found.change == {"lr0": 0.05} and "at lr 0.5 (loss is nan at epoch 1, step 0)" in found.message


def test_batch_loss_jumps_fire_with_the_step_and_ratio() -> None:
    losses = [5.0] * 40
    losses[30] = 15.0
    (found,) = diagnose(epochs([9.0, 8.0]), steps_of(losses), config_summary={**CTX, "lr0": 0.09})
    assert found.rule == "loss_jumps" and found.change == {"lr0": 0.03}
    assert "a batch loss 3x its running median at step 30 (limit 2x)" in found.message
    assert found.evidence == {"batch_jump": 3.0, "batch_jump_step": 30.0, "val_epoch": 2.0,  # 3 / 8
                              "val_over_train": 0.375}
    quiet = diagnose(epochs([9.0, 8.0]), steps_of([5.0] * 40), config_summary=CTX)
    assert quiet[0].rule == "healthy"


def test_a_jump_inside_the_warmup_is_not_counted() -> None:
    losses = [5.0] * 40
    losses[10] = 15.0  # step 10 < warmup_steps 20
    assert check_on("loss_jumps", [], steps_of(losses), CTX).advice is None


def check_on(rule: str, history: list[dict[str, float]], steps: list[dict[str, float]],
             ctx: dict[str, Any]) -> advice.Check:
    found = advice.RULES[rule](history, steps, ctx)
    assert found is not None
    return found


def test_a_resumed_run_names_its_own_epochs() -> None:
    history = [{**h, "epoch": h["epoch"] + 4} for h in epochs([10.0, 9.9, 9.8, 9.7])]
    found = check_on("slow_progress", history, [], {**CTX, "lr0": 1e-4}).advice
    assert found is not None and "1.0% per epoch over epochs 5-8" in found.message


def test_a_failing_rule_never_costs_the_training_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from detune.adapters.base import RunOutcome
    from detune.training import diagnose as diagnose_result

    def broken(*_: Any) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(advice.RULES, "overfitting", broken)
    (found,) = diagnose_result(RunOutcome("completed", epochs([9.0, 8.0, 7.0])))
    assert found["rule"] == "undiagnosed" and found["message"] == "the advisor failed: ZeroDivisionError: boom"


def test_slow_progress_needs_three_epochs_and_a_low_lr() -> None:
    flat = epochs([10.0, 9.9, 9.8, 9.7])
    low = {**CTX, "lr0": 1e-4}
    found = check_on("slow_progress", flat, [], low).advice
    assert found is not None and "1.0% per epoch over epochs 1-4 (10 -> 9.7; limit 6%)" in found.message
    assert found.change == {"lr0": 0.001}
    assert check_on("slow_progress", flat, [], CTX).advice is None  # lr0 at Ultralytics' default: not the lr
    assert advice.slow_progress(flat[:2], [], low) is None  # 2 epochs are too noisy to judge


def test_a_spike_after_the_warmup_asks_for_a_longer_one() -> None:
    losses = [5.0] * 20 + [5.0 + 2.0 * k for k in range(10)] + [20.0] * 10
    found = check_on("warmup_spike", [], steps_of(losses), CTX).advice
    assert found is not None and found.change == {"warmup_epochs": 2.0}
    assert "at the warmup's end (step 19; limit 1.5x) -> warmup_epochs 2" in found.message
    assert f"{found.evidence['spike']:.3g}x" in found.message
    no_warmup = {**CTX, "warmup_steps": 0}
    assert advice.warmup_spike([], steps_of(losses), no_warmup) is None  # no reference without a warmup


def test_overfitting_names_the_epoch_of_the_lowest_validation_loss() -> None:
    history = epochs([9.0, 8.0, 7.0, 6.0, 5.0], val=[6.0, 4.0, 4.4, 4.8, 5.2])
    found = check_on("overfitting", history, [], CTX).advice
    assert found is not None and found.change == {"epochs": 2.0}
    assert "validation loss rose 30% from 4 at epoch 2 to 5.2 at epoch 5 (limit 10%)" in found.message
    assert "train loss fell from 8 to 5" in found.message
    both_rise = epochs([5.0, 5.0, 6.0, 7.0, 8.0], val=[6.0, 4.0, 4.4, 4.8, 5.2])
    assert check_on("overfitting", both_rise, [], CTX).advice is None  # the train loss rose too


def test_a_stopped_trial_is_not_told_its_schedule_is_short() -> None:
    history = epochs([9.0, 8.0, 7.0], metric=[0.1, 0.2, 0.3])
    assert check_on("schedule_too_short", history, [], CTX).advice is not None
    assert advice.schedule_too_short(history, [], {**CTX, "status": "stopped"}) is None
    tiny = epochs([9.0, 8.0, 7.0], metric=[0.001, 0.002, 0.004])
    assert advice.schedule_too_short(tiny, [], CTX) is None  # below 0.01 a trend is noise


def test_advice_round_trips_through_json() -> None:
    for found in run("too_high"):
        assert Advice(**json.loads(json.dumps(found.to_dict()))) == found


# ---- where the advice goes: result.info, advice.json, the summary, MLflow, the study report -------------
@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    from detune import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    tracking.prepare_store(tracking.TrackingConfig(uri=uri, experiment="warmup"))
    return uri


def fake_config(tmp_path: Path, shapes_yaml: Path, **changes: Any) -> Any:
    from detune.config import load_config

    settings = {"data": str(shapes_yaml), "epochs": 3, "project": str(tmp_path / "runs"), "name": "f",
                "warmup_epochs": 0.0, "nbs": 16, "lr0": 0.01, **changes}
    return load_config(None, **settings)


def test_a_training_carries_its_advice_to_info_the_folder_the_summary_and_mlflow(
        tmp_path: Path, shapes_yaml: Path, sqlite_uri: str) -> None:
    from detune import _fake, tracking
    from detune._progress import train_summary
    from detune.training import run

    track = tracking.TrackingConfig(uri=sqlite_uri, experiment="advice")
    result = run(fake_config(tmp_path, shapes_yaml), fit=_fake.fit, tracking=track)
    # the fake's metric (0.31, 0.51, 0.62 at lr0 0.01) still rises at the last of its 3 epochs
    (found,) = result.info["advice"]
    assert found["rule"] == "schedule_too_short" and found["change"] == {"epochs": 6}
    assert json.loads((result.save_dir / "advice.json").read_text()) == result.info["advice"]
    data, lines = train_summary(result, None)
    assert data["advice"] == result.info["advice"]
    assert f"advice: {found['message']}" in lines and "still rises at the last epoch" in found["message"]
    tags = tracking._client(sqlite_uri).get_run(result.run_id).data.tags
    assert tags["detune.advice"] == "schedule_too_short"
    assert tags["mlflow.note.content"] == f"Training-health advice (detune):\n- {found['message']}"


def test_a_trial_stopped_from_outside_is_diagnosed_on_the_epochs_it_ran(tmp_path: Path, shapes_yaml: Path,
                                                                       sqlite_uri: str) -> None:
    """Ray stops a trial with SystemExit inside training: the adapter re-raises it with the curves so far
    (``attach_partial``), and ``training.run`` still writes advice.json and tags the run before re-raising."""
    from detune import tracking
    from detune.adapters.base import RunOutcome, attach_partial
    from detune.training import run

    def stopped_fit(cfg: Any, data_yaml: Path, *, observer: Any = None, **_: Any) -> RunOutcome:
        save = Path(cfg.project) / cfg.name
        save.mkdir(parents=True)
        exit_ = SystemExit(0)
        too_low = load("too_low")
        attach_partial(exit_, RunOutcome("stopped", too_low[0], save, {}, too_low[1], {"warmup_steps": 32,
                                                                                      "steps_per_epoch": 32.0}))
        raise exit_

    track = tracking.TrackingConfig(uri=sqlite_uri, experiment="stopped-advice")
    with pytest.raises(SystemExit):
        run(fake_config(tmp_path, shapes_yaml, lr0=1e-4), fit=stopped_fit, tracking=track)
    (found,) = json.loads((tmp_path / "runs" / "f" / "advice.json").read_text())
    assert found["rule"] == "slow_progress" and "3.5% per epoch" in found["message"]
    client = tracking._client(sqlite_uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("stopped-advice").experiment_id])
    assert logged.data.tags["detune.status"] == "stopped" and logged.data.tags["detune.advice"] == "slow_progress"


def test_the_study_report_has_an_advice_section(tmp_path: Path) -> None:
    from test_report import TRIALS, write_study

    from detune.report import build_report

    out = write_study(tmp_path)
    told = {"ab123_00001": [run("rising")[0].to_dict()], "ab123_00000": [run("healthy")[0].to_dict()],
            "ab123_00002": [run("too_low")[0].to_dict()]}
    for trial_id, found in told.items():
        (out / "trials" / trial_id).mkdir(parents=True, exist_ok=True)
        (out / "trials" / trial_id / "advice.json").write_text(json.dumps(found))
    text = (build_report(out) / "report.md").read_text()
    section = text[text.index("## Advice"):text.index("## Trials")]
    assert "Best trial `ab123_00001` (completed):" in section and told["ab123_00001"][0]["message"] in section
    assert "Baseline `ab123_00000` (completed):" in section and "- healthy: batch loss <= 1.47x" in section
    assert "- `ab123_00002` (stopped): slow_progress (lr0 0.001)" in section and len(TRIALS) == 5
    (out / "trials" / "ab123_00001" / "advice.json").unlink()
    (out / "trials" / "ab123_00000" / "advice.json").unlink()
    (out / "trials" / "ab123_00002" / "advice.json").write_text("not json")
    assert "## Advice" not in (build_report(out) / "report.md").read_text()  # older studies: no section


def test_the_report_reads_the_advice_back_from_mlflow_tags() -> None:
    from detune.report import _advice_from_tags
    from detune.tracking import advice_tags

    told = [a.to_dict() for a in run("too_high")]
    back = _advice_from_tags(advice_tags(told))
    assert back == [{"rule": a["rule"], "message": a["message"]} for a in told]
    assert advice_tags([]) == {} and _advice_from_tags({}) == []


@pytest.mark.slow
def test_real_diverging_training_is_told_the_lr_it_diverged_at(tiny: dict, sqlite_uri: str) -> None:
    """A real tiny training at lr0 1000: the divergence guard stops it within a few steps, every step
    record carries its batch loss and smoothed loss, and the advice (result.info, advice.json, the summary,
    MLflow tags) names the lr and a safe lr0 10x below it."""
    import detune
    from detune import tracking
    from detune._progress import train_summary

    result = detune.train(**{**tiny, "lr0": 1e3, "scheduler": "constant", "epochs": 3},
                          tracking={"uri": sqlite_uri, "experiment": "real-advice"})
    assert result.status == "diverged" and result.steps, result.reason
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["loss_smooth"]) for s in result.steps[:-1])
    last = result.steps[-1]
    (found,) = result.info["advice"]
    assert found["rule"] == "diverged" and found["change"] == {"lr0": 100.0}  # lr 1000 / 10
    assert f"step {int(last['step'])} at lr 1e+03" in found["message"] and "a safe lr0 is 100" in found["message"]
    assert json.loads((result.save_dir / "advice.json").read_text()) == result.info["advice"]
    assert f"advice: {found['message']}" in train_summary(result, None)[1]
    tags = tracking._client(sqlite_uri).get_run(result.run_id).data.tags
    assert tags["detune.advice"] == "diverged" and found["message"] in tags["mlflow.note.content"]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_every_trial_of_a_study_is_diagnosed_even_when_asha_stops_it(tmp_path: Path, shapes_yaml: Path) -> None:
    """A study through Ray (fake trainer): ASHA stops lr0 1e-4 at epoch 2 (Ray's SystemExit inside the trial),
    the others complete; every trial leaves advice.json, its MLflow child run the same advice as tags, and
    the report an Advice section."""
    from mlflow.tracking import MlflowClient

    from detune import _fake
    from detune.tuning import tune

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = {"name": "advised", "output_dir": str(tmp_path / "out"), "search": "grid", "num_samples": 1,
             "train": {"data": str(shapes_yaml), "epochs": 4, "imgsz": 32, "device": "cpu", "warmup_epochs": 0.0},
             "search_space": {"lr0": {"grid": [0.01, 1.0e-4, 0.03]}}, "trial_scheduler": "asha",
             "trial_scheduler_params": {"grace_period": 2, "reduction_factor": 2}, "max_concurrent_trials": 1,
             "resources_per_trial": {"cpu": 1}, "tracking": uri}
    result = tune(study, fit=_fake.fit)
    status = {t["trial_id"]: t["status"] for t in result.trials}
    assert sorted(status.values()) == ["completed", "completed", "stopped"]
    client = MlflowClient(tracking_uri=uri)
    children = {r.data.tags["detune.trial_id"]: r for e in client.search_experiments()
                for r in client.search_runs([e.experiment_id]) if "mlflow.parentRunId" in r.data.tags}
    for trial_id in status:
        told = json.loads((result.output_dir / "trials" / trial_id / "advice.json").read_text())
        assert told and children[trial_id].data.tags["detune.advice"] == ",".join(a["rule"] for a in told)
        assert all(a["message"] in children[trial_id].data.tags["mlflow.note.content"] for a in told)
    stopped = next(t for t, s in status.items() if s == "stopped")
    # the fake's metric still rises at the last epoch, but a stopped trial did not end its schedule
    assert "schedule_too_short" not in children[stopped].data.tags["detune.advice"]
    text = result.report.read_text()
    assert "## Advice" in text and f"`{stopped}` (stopped)" in text
