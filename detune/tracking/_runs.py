"""Logging one MLflow run: ``RunLogger`` (a trainer observer), its config artifact, unlogged points."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune.tracking._sender import _clean_tags, _mlflow_status, _open_run, _Sender, flatten_params, training_params
from detune.tracking._store import (
    _MAX_ENTITIES,
    _MAX_TAG_VALUE,
    _as_tracking_error,
    _short,
    check_reachable,
    prepare_store,
)
from detune.tracking_config import TrackingConfig, redact

if TYPE_CHECKING:

    from detune.adapters.base import RunOutcome

log = logging.getLogger(__name__)
STEP_GROUPS = 12  # param groups whose lr is logged at every optimizer step


# ---- one training run ----------------------------------------------------------------------------------
class RunLogger(_Sender):
    """An adapter observer that logs one training run; logging errors are buffered and retried, never raised.

    Points are kept in memory and sent with ``log_batch`` (<= 1000 per call) at each epoch end, or earlier
    when 1000 are waiting. ``finish`` retries for ``cfg.flush_timeout`` seconds, then reports what is left.

    Raises:
        TrackingError: from the constructor only, when the run cannot be created or reopened.
    """

    def __init__(self, cfg: TrackingConfig, *, params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
        super().__init__(cfg, _open_run(cfg, flatten_params(params), {"detune.kind": "train", **tags}))

    # ---- adapter events (never raise) --------------------------------------------------------------------
    def on_start(self, info: Mapping[str, Any]) -> None:
        self.save_dir = Path(info["save_dir"]) if info.get("save_dir") else None
        self._tags.update(_clean_tags({"detune.device": info.get("device", ""),
                                       "detune.save_dir": self.save_dir or ""}))
        self._flush()

    def on_step(self, step: int, epoch: int, lrs: Sequence[float]) -> None:
        # Ultralytics' 3 groups and lr_mult's (up to 3 x 3); an lr_layer_decay's dozens of groups are each a
        # fixed multiple of these: their lr is logged per epoch (lr/pgN), not at every step.
        self._add({f"lr_step/pg{i}": lr for i, lr in enumerate(lrs[:STEP_GROUPS])}, int(step))
        if len(self._pending) >= _MAX_ENTITIES:
            self._flush()

    def on_epoch(self, record: Mapping[str, float], weights_dir: Path) -> None:
        self._add({k: v for k, v in record.items() if k != "epoch"}, int(record["epoch"]))
        self._flush()

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Buffer extra metrics at ``step`` (e.g. the LR finder's curve; keys sanitized), sent with the next
        flush and at the latest by ``finish``; never raises for store errors."""
        self._add(values, int(step))
        if len(self._pending) >= _MAX_ENTITIES:
            self._flush()

    # ---- end of run --------------------------------------------------------------------------------------
    def finish(self, result: RunOutcome, *, artifacts: Sequence[Path] = ()) -> dict[str, Any]:
        """Send what is buffered, the artifacts and the final status of ``result`` (a ``RunOutcome``, such as
        a ``TrainResult``, with the run's settings in ``config``); return ``report()``.

        Status: completed -> FINISHED; diverged -> FINISHED with tags ``detune.status=diverged`` and
        ``detune.reason``; failed -> FAILED with ``detune.reason``. The training-health advice
        (``result.info["advice"]``) goes to tags ``detune.advice`` and ``mlflow.note.content`` (``advice_tags``).
        Artifacts: ``weights/best.pt``,
        ``results.csv``, ``lr_schedule.png``, ``config.yaml`` (re-runnable), Ultralytics' ``plots/*.png``,
        then ``artifacts`` (files or folders).
        """
        deadline = time.monotonic() + self.cfg.flush_timeout
        self._failures, self._next_try = 0, 0.0  # the store may be back: restart the backoff at 1 s
        self.save_dir = result.save_dir or self.save_dir
        self._tags["detune.status"] = result.status
        self._tags.update(_clean_tags(advice_tags(result.info.get("advice"))))
        if result.reason:
            self._tags["detune.reason"] = result.reason[:_MAX_TAG_VALUE]
        self._flush(deadline)
        files = self._artifact_files(result, artifacts)
        missed = [str(path) for path, dest in files if not self._upload(path, dest, deadline)]
        return self._close(_mlflow_status(result.status), deadline, missed)

    def abort(self, error: BaseException, *, advice: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """End the run after an exception escaped training: KILLED for KeyboardInterrupt, FINISHED with
        ``detune.status=stopped`` for the SystemExit Ray raises in a trial its scheduler stopped, else FAILED.
        ``advice``: the diagnosis of the epochs it ran, tagged as ``finish`` does."""
        self._tags.update(_clean_tags(advice_tags(advice)))
        if isinstance(error, SystemExit):
            self._tags.update({"detune.status": "stopped", "detune.reason": "stopped early by the trial scheduler"})
            deadline = time.monotonic() + min(self.cfg.flush_timeout, 5.0)
            self._failures, self._next_try = 0, 0.0
            self._flush(deadline)
            return self._close("FINISHED", deadline, [])
        killed = isinstance(error, KeyboardInterrupt)
        self._tags.update({"detune.status": "killed" if killed else "failed",
                           "detune.reason": f"{type(error).__name__}: {_short(error, 2000)}"})
        deadline = time.monotonic() + min(self.cfg.flush_timeout, 5.0)
        self._failures, self._next_try = 0, 0.0
        self._flush(deadline)
        csv = self.save_dir / "results.csv" if self.save_dir else None
        missed = [str(csv)] if csv and csv.is_file() and not self._upload(csv, None, deadline) else []
        return self._close("KILLED" if killed else "FAILED", deadline, missed)

    def _artifact_files(self, result: RunOutcome, extra: Sequence[Path]) -> list[tuple[Path, str | None]]:
        files: list[tuple[Path, str | None]] = []
        if "best" in result.weights:
            files.append((Path(result.weights["best"]), "weights"))
        folder = self.save_dir if self.save_dir and self.save_dir.is_dir() else None
        if folder is not None:
            files += [(folder / "results.csv", None)] if (folder / "results.csv").is_file() else []
            pngs = sorted(folder.glob("*.png"))
            files += [(p, None if p.name == "lr_schedule.png" else "plots") for p in pngs]
        config_dir = folder or Path(tempfile.mkdtemp(prefix="detune-config-"))
        files.append((write_config(result.config, config_dir / "config.yaml"), None))
        return files + [(Path(p), None) for p in extra]


def advice_tags(advice: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """The training-health advice as MLflow tags: ``detune.advice`` (the rule names, comma-separated) and
    ``mlflow.note.content`` (the run's description in the MLflow UI: one line per message). {} for None."""
    if not advice:
        return {}
    note = "\n".join(f"- {a['message']}" for a in advice)
    return {"detune.advice": ",".join(str(a["rule"]) for a in advice),
            "mlflow.note.content": f"Training-health advice (detune):\n{note}"}


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """The resolved config as YAML, re-runnable with ``detune.train(path)``; tracking URIs lose passwords."""
    import yaml

    data = dict(config)
    track = data.get("tracking")
    if isinstance(track, TrackingConfig):
        data["tracking"] = {"uri": redact(track.uri), "experiment": track.experiment}
    elif isinstance(track, str):
        data["tracking"] = redact(track)
    elif isinstance(track, Mapping) and isinstance(track.get("uri"), str):
        data["tracking"] = {**track, "uri": redact(track["uri"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def open_training_run(cfg: TrackingConfig, *, config: Mapping[str, Any], dataset: Mapping[str, Any],
                      effective_lr0: float) -> RunLogger:
    """Check the store, create the experiment and the run of one training (what ``detune.train`` does).

    Raises:
        TrackingError: before any training, when the store is unreachable or refuses the run.
    """
    check_reachable(cfg)
    experiment_id = prepare_store(cfg)
    logger = RunLogger(cfg, params=training_params(config, dataset, effective_lr0=effective_lr0),
                       tags={"detune.device": config.get("device", "")})
    logger.experiment_id = experiment_id
    return logger


def flush_unlogged(path: str | os.PathLike[str]) -> int:
    """Send what a run could not log (``mlflow_unlogged.json``) when the store is back; returns points sent.

    Raises:
        TrackingError: when the store still cannot be written (the file is kept for another try).
    """
    from mlflow.entities import Metric

    data = json.loads(Path(path).read_text())
    sender = _Sender(TrackingConfig(uri=data["uri"]), data["run_id"])
    sender._pending = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts in data["metrics"]]
    sender._tags = dict(data["tags"])
    count = len(sender._pending)
    with _as_tracking_error(sender.cfg, f"cannot flush {path}"):
        while sender._pending or sender._tags:
            sender._send_next()
        if data.get("status"):
            sender.client.set_terminated(data["run_id"], data["status"])
    Path(path).unlink()
    return count


