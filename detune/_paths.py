"""Output locations checked before any compute: a folder or file detune is about to create or write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from detune.errors import ConfigError, DetuneError


def writable_dir(path: str | os.PathLike[str], *, field: str,
                 error: type[DetuneError] = ConfigError) -> Path:
    """The absolute ``path`` once it is sure it is, or can be made, a folder this process writes in.

    Checks the nearest existing part of ``path``: a file there (``/etc/passwd/x``) or a folder without write
    permission (read-only, immutable, another user's) raises ``error`` naming ``field``, the path and the fix.
    Creates nothing (a probe file in the existing folder is removed at once).

    Raises:
        DetuneError: ``error`` (ConfigError by default), before anything is written.

    Example:
        >>> writable_dir("/etc/passwd/x", field="project")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        detune.errors.ConfigError: project (/etc/passwd/x): /etc/passwd is a file, not a folder; set project ...
    """
    given = Path(path).expanduser()
    target = Path(os.path.abspath(given))
    _check(target, given, field, error)
    return target


def _check(target: Path, given: Path, field: str, error: type[DetuneError]) -> None:
    existing = target
    while not existing.exists() and existing != existing.parent:  # exists() is False under a file too
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{field} ({given}): {existing} is a file, not a folder; set {field} to a folder you can write, "
                    "e.g. runs/detune")
    try:  # os.access says yes to root on a read-only mount or an immutable folder: try for real
        handle, probe = tempfile.mkstemp(prefix=".detune-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        raise error(f"{field} ({given}): cannot write in {existing} ({e.strerror or e}); choose a folder you can "
                    f"write, or fix the permissions of {existing}") from e


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what writing under it creates), or None."""
    path = Path(os.path.abspath(path))
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def remove_empty(file: Path, created: Path | None) -> None:
    """Delete ``file``, then its folders up to ``created`` (from ``first_missing``) while they are empty."""
    file.unlink(missing_ok=True)
    if created is None:
        return
    folder = file.parent
    while folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        if folder == created:
            break
        folder = folder.parent


def writable_file(path: str | os.PathLike[str], *, field: str, kind: str = "file",
                  error: type[DetuneError] = ConfigError) -> Path:
    """The absolute ``path`` of a ``kind`` file to write (e.g. "a .png file"): its folder as ``writable_dir``
    checks it, and ``path`` itself not a folder."""
    given = Path(path).expanduser()
    if given.is_dir():
        raise error(f"{field} ({given}) is a folder; give the path of {kind} (e.g. {given / 'plot.png'})")
    target = Path(os.path.abspath(given))
    _check(target.parent, given, field, error)
    return target


def atomic_write(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` via a temp file (its name holds the pid: parallel writers of one file never
    share a temp) and a rename, so a reader or a full disk never sees a partial file; ``mode`` sets the
    permissions the file is created with (e.g. 0o600 for a secret). Missing parent folders are created.

    Raises:
        OSError: the write failed (the temp file is removed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode is not None:  # created with its permissions before any byte is written
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path
