"""The trainer seam: what every trainer (the Ultralytics adapter, the fake) takes and returns.

``fit(cfg, data_yaml, *, observer=None, resume_from=None, probe=None) -> RunOutcome`` trains one run.
``train``, ``lr_find``, ``tune`` and the CLI accept such a ``fit`` (the ``fit=`` argument), which is how
tests inject ``detune._fake.fit``. Nothing here imports a training framework.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from detune.errors import AdapterError

__all__ = ["STATE_FILE", "STATUSES", "Fanout", "Fit", "Observer", "Probe", "RunOutcome", "Status", "attach_partial",
           "partial_outcome", "read_state", "sha256", "trusted_state"]

STATE_FILE = "detune_state.json"  # written beside last.pt: optimizer-step counter, epoch, checksum, plateau state

# completed: every epoch ran; diverged: the divergence guard stopped it (``reason`` says where);
# failed: training raised (``reason`` holds the error); stopped: a probe (the LR range test) ended it.
Status = Literal["completed", "diverged", "failed", "stopped"]
STATUSES: tuple[Status, ...] = ("completed", "diverged", "failed", "stopped")


class Observer(Protocol):
    """What a trainer tells the rest of detune while it trains; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, step: int, epoch: int, lrs: list[float]) -> None: ...
    def on_epoch(self, record: dict[str, float], weights_dir: Path) -> None: ...


class Probe(Protocol):
    """Takes over the lr for an LR range test: ``lr(step)`` for every param group, ``on_loss`` after each
    batch returns True to stop (the run then ends with status ``stopped``). The divergence guard is off; no
    epoch is validated."""

    def lr(self, step: int) -> float: ...
    def on_loss(self, step: int, loss: float) -> bool: ...


@dataclasses.dataclass
class RunOutcome:
    """Plain-data result of one ``fit``: no framework objects. ``history`` holds one dict per epoch,
    ``steps`` one entry per optimizer step (step, epoch from 0, lr/pgN, and where the trainer measures it
    ``loss``: the mean batch loss over the batches the step accumulated, ``loss_smooth``: the divergence
    guard's bias-corrected EMA of the batch loss after them); ``config`` the settings the run used
    (filled in by ``detune.train``; a trainer may leave it empty)."""

    status: Status
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    save_dir: Path | None = None
    weights: dict[str, Path] = dataclasses.field(default_factory=dict)
    steps: list[dict[str, float]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


def attach_partial(error: BaseException, outcome: RunOutcome) -> None:
    """Give an exception that ends training from outside (Ray's SystemExit for a trial its scheduler stopped,
    Ctrl-C) the curves recorded so far, status ``stopped``, so the caller can still diagnose them."""
    error.detune_outcome = outcome  # type: ignore[attr-defined]


def partial_outcome(error: BaseException) -> RunOutcome | None:
    """The outcome ``attach_partial`` gave ``error``, or None."""
    found = getattr(error, "detune_outcome", None)
    return found if isinstance(found, RunOutcome) else None


class Fit(Protocol):
    """The trainer: ``detune.adapters.ultralytics.fit`` or ``detune._fake.fit``."""

    def __call__(self, cfg: Any, data_yaml: Path, *, observer: Any = None, resume_from: Path | None = None,
                 probe: Probe | None = None) -> RunOutcome: ...


class Fanout:
    """Forwards a trainer's events to several observers (tracking, Ray reporting, progress)."""

    def __init__(self, observers: Sequence[Any]) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattr__(self, name: str) -> Any:
        fns = [getattr(o, name) for o in self.observers if hasattr(o, name)]

        def call(*args: Any) -> None:
            for fn in fns:
                fn(*args)

        return call


def read_state(weights_dir: Path) -> dict[str, Any] | None:
    """The state a trainer saved in ``weights_dir`` (None when there is none)."""
    path = Path(weights_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trusted_state(checkpoint: Path) -> dict[str, Any]:
    """detune's state saved beside ``checkpoint``, once it is certain that detune wrote that very file.

    ``.pt`` files are pickles: loading one can run any code. So detune resumes only from a ``last.pt`` whose
    SHA-256 it recorded in ``detune_state.json`` when it saved it, and checks that before unpickling.

    Raises:
        AdapterError: no state file beside the checkpoint, or a checksum that differs.
    """
    state_file = checkpoint.parent / STATE_FILE
    why = ("; .pt files are pickles that can run code when loaded, so detune resumes only from checkpoints it "
           "saved itself (to start from weights you trust, pass them as model=)")
    if not state_file.is_file():
        raise AdapterError(f"{checkpoint} is not a checkpoint detune wrote: no {STATE_FILE} state file beside it{why}")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"{checkpoint} is not a checkpoint detune wrote: {state_file} is unreadable "
                           f"({e}){why}") from e
    if not checkpoint.is_file() or state.get("last_sha256") != sha256(checkpoint):
        raise AdapterError(f"{checkpoint} is not a checkpoint detune wrote: its checksum differs from the one in "
                           f"{state_file}{why}")
    return state
