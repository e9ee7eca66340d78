"""Terminal side of the CLI: live progress (rich) for tune, train and lr-find; library chatter to a log file.

On a terminal the displays are rich ``Live`` renderables on stderr; without one (CI, pipes) they print a
line per event that matters (a trial changing status, an epoch ending), never a refreshing bar. ``capture``
sends what Ultralytics, Ray and MLflow print (and their Python warnings) to a log file unless verbose.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from detune.study_files import TRIAL_STATUSES as _DONE

_STYLE = {"pending": "dim", "running": "cyan", "completed": "green", "stopped": "yellow", "diverged": "red",
          "failed": "bold red", "interrupted": "magenta"}
_MAX_ROWS = 20  # a larger study shows its running trials and its best ones


class Terminal:
    """Where the CLI writes: ``out`` for the result, ``console`` (stderr) for progress and messages."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.console = Console(file=self.err, soft_wrap=True, highlight=False)
        # verbose: the libraries print to the terminal too, so progress comes as lines, not a live display
        self.live = self.console.is_terminal and not quiet and not verbose

    def echo(self, text: str) -> None:
        """The result (stdout), always shown."""
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A progress line on stderr; nothing in quiet mode."""
        if not self.quiet:
            self.console.print(text, markup=False)


# ---------------------------------------------------------------------------------------------------------
# Library chatter -> log file
# ---------------------------------------------------------------------------------------------------------
class _Redirect(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: writes go to the log file while a capture is active, else to
    whatever the real stream is then (loggers created during a capture keep this object)."""

    def __init__(self, name: str) -> None:
        self.name_ = name
        self.target: TextIO | None = None

    def _stream(self) -> TextIO:
        if self.target is not None:
            return self.target
        current = getattr(sys, self.name_)
        return current if current is not self else getattr(sys, f"__{self.name_}__")

    def write(self, text: str) -> int:
        stream = self._stream()
        stream.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_REDIRECTS = {"stdout": _Redirect("stdout"), "stderr": _Redirect("stderr")}


@contextlib.contextmanager
def capture(log_path: Path, *, verbose: bool, ultralytics_log: bool = True) -> Iterator[Path | None]:
    """Send what the libraries write to stdout/stderr (and warnings) to ``log_path`` (appended) meanwhile.

    ``ultralytics_log``: make Ultralytics log at INFO into the file (it prints nothing otherwise); off for
    studies, whose trials run in Ray workers that would inherit it. Verbose: no file; what the libraries
    print goes to stderr, so stdout keeps only the result (``--json`` stays parseable). Yields the log
    path (None when verbose).
    """
    if verbose:
        redirect, saved_stdout = _REDIRECTS["stdout"], sys.stdout
        redirect.target, sys.stdout = sys.stderr, redirect
        try:
            yield None
        finally:
            sys.stdout, redirect.target = saved_stdout, None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"stdout": sys.stdout, "stderr": sys.stderr, "env": os.environ.get("YOLO_VERBOSE")}
    had_ultralytics = "ultralytics" in sys.modules
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        log.write(f"\n==== detune {' '.join(sys.argv[1:])} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        for name, redirect in _REDIRECTS.items():
            redirect.target = log
            setattr(sys, name, redirect)
        if saved["env"] is None and ultralytics_log:
            os.environ["YOLO_VERBOSE"] = "true"  # read at Ultralytics' import: its INFO log goes to the file
        try:
            yield log_path
        finally:
            sys.stdout, sys.stderr = saved["stdout"], saved["stderr"]
            for redirect in _REDIRECTS.values():
                redirect.target = None
            if saved["env"] is None and ultralytics_log:
                os.environ.pop("YOLO_VERBOSE", None)
                if not had_ultralytics and "ultralytics" in sys.modules:  # quiet again outside the capture
                    logging.getLogger("ultralytics").setLevel(logging.ERROR)


def move_log(log: Path | None, folder: Path | None) -> Path | None:
    """Move a log into ``folder`` (a training's save_dir, known only at its end) as ``detune.log``."""
    if log is None or folder is None or not log.is_file() or not folder.is_dir():
        return log
    dest = folder / "detune.log"
    with dest.open("a", encoding="utf-8") as out:
        out.write(log.read_text(encoding="utf-8"))
    log.unlink()
    return dest


# ---------------------------------------------------------------------------------------------------------
# tune: live table of trials
# ---------------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "-"
    return "-" if value is None else str(value)


def _metric(value: Any) -> str:
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return f"{value:.4f}" if finite else "-"


class TuneDisplay:
    """The ``progress`` callable of ``detune.tuning.tune``: one row per trial (trial_id, status, params,
    epoch, metric, best), drawn as a live table plus an overall bar, or as one line per status change."""

    def __init__(self, term: Terminal, *, name: str, metric: str, mode: str, epochs: int, total_trials: int,
                 params: Sequence[str]) -> None:
        self.term, self.name, self.metric, self.mode = term, name, metric, mode
        self.epochs, self.total_trials, self.params = epochs, total_trials, list(params)
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[str, str] = {}
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> TuneDisplay:
        self.term.note(f"study {self.name}: {self.total_trials} trials x {self.epochs} epochs; starting Ray")
        if self.term.live:
            self._live = Live(console=self.term.console, get_renderable=self.render, refresh_per_second=2,
                              redirect_stdout=False, redirect_stderr=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows = [dict(r) for r in rows]
        if self._live is None:
            for row in self.rows:
                if self.seen.get(row["trial_id"]) != row["status"]:
                    self.seen[row["trial_id"]] = row["status"]
                    self.term.note(self._line(row))

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def _line(self, row: Mapping[str, Any]) -> str:
        params = " ".join(f"{k}={_fmt(row['params'].get(k))}" for k in self.params if k in row["params"])
        text = f"[{self._elapsed()}] trial {row['trial_id']} {row['status']:<9} {params}"
        if row["status"] in _DONE:
            text += f"  epoch {row['epoch']}/{self.epochs}  best {self.metric} {_metric(row['best'])}"
        return text

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("running", *_DONE)}
        for row in self.rows:
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def render(self) -> Any:
        sign = 1 if self.mode == "max" else -1
        rows = self.rows
        if len(rows) > _MAX_ROWS:
            running = [r for r in rows if r["status"] == "running"]
            scored = sorted((r for r in rows if r["status"] != "running" and r["best"] is not None),
                            key=lambda r: -sign * r["best"])
            rows = (running + scored)[:_MAX_ROWS]
        table = Table(title=f"study {self.name}", title_justify="left", expand=False, pad_edge=False)
        for column in ("trial", "status", *self.params, "epoch", self.metric, "best"):
            table.add_column(column, justify="right" if column not in ("trial", "status") else "left")
        for r in rows:
            table.add_row(r["trial_id"], Text(r["status"], style=_STYLE.get(r["status"], "")),
                          *(_fmt(r["params"].get(k)) for k in self.params), f"{r['epoch']}/{self.epochs}",
                          _metric(r["metric"]), _metric(r["best"]))
        done = sum(self.epochs if r["status"] in _DONE else min(r["epoch"], self.epochs) for r in self.rows)
        total = max(self.total_trials, len(self.rows)) * self.epochs
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total, completed=done, width=30),
                    f"{done}/{total} trial-epochs  {counts or 'starting trials'}  {self._elapsed()}")
        return Group(table, bar)


# ---------------------------------------------------------------------------------------------------------
# train and lr-find: one bar over the optimizer steps
# ---------------------------------------------------------------------------------------------------------
class _StepBar:
    def __init__(self, term: Terminal, label: str) -> None:
        self.term, self.label = term, label
        self.progress: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if self.term.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.term.console,
                                     redirect_stdout=False, redirect_stderr=False, refresh_per_second=4)
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=None, info="starting")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
            self.progress = None

    def update(self, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **kwargs)


class TrainDisplay(_StepBar):
    """An adapter observer (``on_start``/``on_step``/``on_epoch``) for ``detune.training.run``."""

    def __init__(self, term: Terminal, *, epochs: int, metric: str = "metrics/mAP50-95") -> None:
        super().__init__(term, "training")
        self.epochs, self.metric = epochs, metric
        self.steps_per_epoch = 1.0
        self.lr = math.nan
        self.last = "starting"
        self.started = time.monotonic()
        self.save_dir: Path | None = None

    def on_start(self, info: Mapping[str, Any]) -> None:
        self.steps_per_epoch = float(info.get("steps_per_epoch") or 1.0)
        start = int(info.get("start_epoch") or 0)
        self.save_dir = Path(info["save_dir"]) if info.get("save_dir") else None
        total = math.ceil(self.epochs * self.steps_per_epoch)
        self.update(total=total, completed=start * self.steps_per_epoch,
                    description=f"epoch {start + 1}/{self.epochs}")
        if self.progress is None:
            self.term.note(f"training on {info.get('device', '?')}: {self.epochs} epochs x "
                           f"{self.steps_per_epoch:g} optimizer steps, results in {info.get('save_dir')}")

    def on_step(self, step: int, epoch: int, lrs: Sequence[float]) -> None:
        self.lr = lrs[0] if lrs else math.nan
        self.update(completed=step + 1, description=f"epoch {epoch + 1}/{self.epochs}",
                    info=f"lr {self.lr:.3g}  {self.last}")

    def on_epoch(self, record: Mapping[str, float], weights_dir: Path) -> None:
        loss = sum(record.get(f"train/{k}_loss", 0.0) for k in ("box", "cls", "dfl"))
        self.last = f"loss {loss:.4g}  {self.metric.split('/')[-1]} {record.get(self.metric, math.nan):.4f}"
        lr = record.get("lr/pg0", self.lr)  # NaN: this epoch made no optimizer step
        lr_text = f"lr {lr:.4g}" if math.isfinite(lr) else "no optimizer step"
        self.update(info=f"{lr_text}  {self.last}")
        if self.progress is None:
            self.term.note(f"epoch {int(record['epoch'])}/{self.epochs}  {self.last}  {lr_text}  "
                           f"[{time.monotonic() - self.started:.0f} s]")


class FinderDisplay(_StepBar):
    """Observer of an LR range test (``detune.lr_finder.range_test(observers=...)``): step, lr and loss as the
    sweep goes."""

    def __init__(self, term: Terminal, *, num_iters: int | None) -> None:
        super().__init__(term, "LR range test")
        self.num_iters = num_iters
        self.lr = math.nan

    def on_start(self, info: Mapping[str, Any]) -> None:
        self.num_iters = self.num_iters or int(info.get("batches_per_epoch") or 1)
        self.update(total=self.num_iters, completed=0)
        if self.progress is None:
            self.term.note(f"LR range test on {info.get('device', '?')}: up to {self.num_iters} steps")

    def on_step(self, step: int, epoch: int, lrs: Sequence[float]) -> None:
        self.lr = lrs[0] if lrs else math.nan

    def on_loss(self, step: int, loss: float) -> None:
        self.update(completed=step + 1, info=f"lr {self.lr:.3g}  loss {loss:.4g}")


# ---------------------------------------------------------------------------------------------------------
# Final summaries: (JSON-able data, text lines) for each command
# ---------------------------------------------------------------------------------------------------------
Summary = tuple[dict[str, Any], list[str]]


def _elapsed_text(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def mlflow_link(uri: str, experiment: str, experiment_id: str | None) -> str:
    """Where to see an experiment's runs: the UI page of its runs table (Model-training view, not MLflow 3.17's
    GenAI view) for a server, else the ``detune ui`` command that serves the local store, plus that page."""
    from detune.tracking_config import local_path, ui_url

    if not uri:
        return ""
    if uri.startswith(("http://", "https://")):
        return f"experiment {experiment}: {ui_url(uri, experiment_id)}"
    if local_path(uri) is None:  # a database or Databricks store: its own UI
        return f"experiment {experiment} of {uri}"
    page = f" (page {ui_url('', experiment_id)})" if experiment_id is not None else ""
    return f"experiment {experiment}: detune ui --uri {shlex.quote(uri)} --experiment {shlex.quote(experiment)}{page}"


def train_summary(result: Any, log: Path | None) -> Summary:
    best = result.best
    lines = [f"status: {result.status}" + (f" ({result.reason})" if result.reason else ""),
             f"epochs: {len(result.history)}  best epoch: {result.best_epoch}",
             f"mAP50: {best.get('metrics/mAP50', math.nan):.4f}  "
             f"mAP50-95: {best.get('metrics/mAP50-95', math.nan):.4f}",
             f"lr0: {result.info.get('effective_lr0')}  scheduler: {result.config.get('scheduler')}",
             *(f"advice: {a['message']}" for a in result.info.get("advice") or []),
             f"results: {result.save_dir}"]
    if result.info.get("test"):
        test = result.info["test"]
        lines.insert(3, f"test split: mAP50 {test['test/mAP50']:.4f}  mAP50-95 {test['test/mAP50-95']:.4f}")
    dropped = result.info.get("dropped_images") or {}
    if any(dropped.values()):
        files = [Path(f).name for split in ("train", "val") for f in dropped.get(split, [])]
        lines.append(f"dropped images: {len(dropped.get('train', []))} train images, {len(dropped.get('val', []))} "
                     f"val images cannot be read and were skipped: {', '.join(files[:5])}"
                     + (f" and {len(files) - 5} more" if len(files) > 5 else "")
                     + f" (reasons: detune data check {result.info.get('dataset', {}).get('data.yaml', '')})")
    if result.run_id:
        track = result.info.get("tracking") or {}
        where = mlflow_link(track.get("uri", ""), track.get("experiment", ""), track.get("experiment_id"))
        lines.append(f"MLflow run: {result.run_id}" + (f" in {where}" if where else ""))
    if log is not None:
        lines.append(f"log: {log}")
    return {"status": result.status, "reason": result.reason, "best_epoch": result.best_epoch, "best": best,
            "history": result.history, "config": result.config, "save_dir": result.save_dir,
            "run_id": result.run_id, "log": log, "dropped_images": dropped,
            "advice": result.info.get("advice") or []}, lines


def tune_summary(result: Any, study: Any, *, report: Path | None, log: Path | None, elapsed: float,
                 interrupted: bool) -> Summary:
    from detune.tracking_config import redact, resolve_tracking

    counts = {s: sum(t["status"] == s for t in result.trials) for s in _DONE}
    epochs = sum(int(t.get("epochs_run") or 0) for t in result.trials)
    folds = study.cv.folds if getattr(study, "cv", None) else 1  # a cross-validated trial trains once per fold
    spent = f"{epochs} trial-epochs" if folds == 1 else f"{epochs} trial-epochs x {folds} folds"
    lines = [f"study {result.name}{' (interrupted)' if interrupted else ''}: {len(result.trials)} trials ("
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"), {spent} in " + _elapsed_text(elapsed)]
    if result.confirm:
        lines.append(_confirm_line(result.confirm, result.metric, result.best_params))
    elif result.best_config is not None:
        lines.append(f"best {result.metric}: {result.best_metrics.get(result.metric, math.nan):.4f} with "
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in result.best_params.items()))
    if result.best_config is not None:
        lines.append(f"best config: {result.best_yaml}  (re-run: detune train {result.best_yaml})")
    else:
        lines.append("no trial produced a usable result; see trials.csv")
    lines.append(f"trials: {result.trials_csv}")
    lines += [f"{name}: {path}" for name, path in (("report", report), ("log", log)) if path is not None]
    track = resolve_tracking(study.tracking, default_experiment=study.name)
    if result.parent_run_id and track is not None:
        from detune.tracking import find_experiment_id
        from detune.tracking_config import local_path

        linked = track.uri.startswith(("http://", "https://")) or local_path(track.uri) is not None
        where = mlflow_link(redact(track.uri), track.experiment, find_experiment_id(track) if linked else None)
        lines.append(f"MLflow: run {result.parent_run_id} in {where}")
    return {"name": result.name, "metric": result.metric, "mode": result.mode, "interrupted": interrupted,
            "best_config": result.best_config, "best_params": result.best_params,
            "best_metrics": result.best_metrics, "trials": result.trials,
            "parent_run_id": result.parent_run_id,
            "output_dir": result.output_dir, "best_yaml": result.best_yaml, "trials_csv": result.trials_csv,
            "report": report, "log": log, "confirm": result.confirm}, lines


def _confirm_line(confirm: dict[str, Any], metric: str, params: dict[str, Any]) -> str:
    """``confirmed best ... over seeds [...]`` against the baseline, with the held-out test scores."""
    best, base = confirm["best"], confirm.get("baseline")
    confirmed, tested = confirm["confirmed"], confirm.get("test") or {}

    def score(trial: str) -> str:
        c = confirmed[trial]
        text = f"{c['mean']:.4f} +- {c['std']:.4f}"
        tests = [f"{key} {t[trial]['mean']:.4f}" for key, t in tested.items() if t.get(trial, {}).get("n")]
        return text + (f" ({', '.join(tests)})" if tests else "")

    line = (f"confirmed best {metric} over seeds {confirm['seeds']}: {score(best['trial_id'])} with "
            + (", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "the base config"))
    if base is not None and base != best["trial_id"] and confirmed.get(base, {}).get("n"):
        line += f"; baseline {score(base)}"
    elif base == best["trial_id"]:
        line += " (the baseline: no trial beat it)"
    return line


def finder_summary(result: Any, method: str, plot: Path, *, rerun: str, log: Path | None) -> Summary:
    found = result.suggest(method)
    s = result.settings
    lines = [f"LR range test: {len(result.lrs)}/{result.num_iters} steps, lr {s.min_lr:g} .. {s.max_lr:g} "
             f"({s.mode})" + (f"; stopped: {result.stop_reason}" if result.stop_reason else ""),
             f"suggested lr0 ({method}): "
             + (f"{found.lr:.4g}" if found.lr is not None else f"none ({found.reason})"),
             "other suggestions: " + ", ".join(f"{m} {_fmt(v)}" for m, v in result.suggestions().items()
                                              if m != method),
             f"plot: {plot}"]
    if found.lr is not None:
        lines.append(f"use it: {rerun} lr0={found.lr:.4g}")
    if log is not None:
        lines.append(f"log: {log}")
    return {**result.to_dict(), "method": method, "suggestion": found.lr, "reason": found.reason,
            "plot": plot, "log": log}, lines


def schedule_summary(cfg: Any, plan: Any, points: list[dict[str, Any]], source: str, png: Path, *,
                     peak: float | None = None) -> Summary:
    from detune.config import schedule_kwargs

    spe = plan.steps_per_epoch
    peak_text = f", peak lr {peak:g}" if peak is not None else ""
    lines = [f"{cfg.schedule_name} schedule, lr0 {cfg.effective_lr0:g}, {cfg.epochs} epochs x {spe:g} steps "
             f"({source}), warmup {plan.warmup_steps} steps, interval {cfg.scheduler_interval}{peak_text}",
             f"{'step':>7} {'epoch':>5} {'lr':>11} {'bias lr':>11} {'momentum':>8}"]
    lines += [f"{p['step']:>7} {p['epoch']:>5} {p['lr']:>11.5g} {p['bias_lr']:>11.5g} {p['momentum']:>8.4g}"
              for p in points]
    if cfg.lr_mult:
        lines.append("lr_mult: " + ", ".join(f"{part} weights at lr x {m:g}" for part, m in cfg.lr_mult.items()))
    if cfg.lr_layer_decay is not None:
        d = cfg.lr_layer_decay
        lines.append(f"lr_layer_decay {d:g}: layer k below the head at lr x {d:g}^k (the head at lr: "
                     + ", ".join(f"x{d ** k:.3g} at k={k}" for k in (1, 5, 10, 20)) + ")")
    lines.append(f"plot: {png}")
    return {"scheduler": cfg.schedule_name, "lr_mult": dict(cfg.lr_mult), "lr_layer_decay": cfg.lr_layer_decay,
            "scheduler_params": schedule_kwargs(cfg),
            "lr0": cfg.effective_lr0, "epochs": cfg.epochs, "steps_per_epoch": spe,
            "warmup_steps": plan.warmup_steps, "peak_lr": peak,
            "key_points": points, "plot": png}, lines
