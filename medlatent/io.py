"""Atomic file writing and safe file names: nothing half-written, nothing outside its folder."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.nii.gz``, ``.png``) because some writers
    pick the format from it. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def safe_name(subject: str, max_len: int = 120) -> str:
    """A file-name component for a subject ID that cannot leave its folder.

    Path separators, ``..``, leading dots and odd characters become ``_``; an empty
    result becomes ``subject``. The mapping is deterministic so names are stable.
    """
    name = _UNSAFE.sub("_", str(subject)).strip("._")
    name = name.replace("..", "_")
    if not name:
        name = "subject"
    return name[:max_len]


def child_path(folder: str | os.PathLike, subject: str, suffix: str = "") -> Path:
    """``folder / safe_name(subject) + suffix``, checked to lie inside ``folder``."""
    folder = Path(folder).resolve()
    path = (folder / (safe_name(subject) + suffix)).resolve()
    if folder not in path.parents:
        raise ValueError(f"refusing to write outside {folder}: {path}")
    return path
