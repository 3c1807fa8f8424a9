"""Run directories: where a training run keeps its config, checkpoints, metrics and caches.

Reading a run's config *and validating it* needs the model families, so that lives in the
command layer (``medlatent.commands.runs``); here is what knows no family.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medlatent.config import dump_config
from medlatent.errors import InputError
from medlatent.io import write_text_atomic

# what the training scans looked like on disk (transforms/fingerprint.py), written by train
FINGERPRINT_FILE = "fingerprint.json"

__all__ = ["FINGERPRINT_FILE", "prepare_run", "load_checkpoint", "checkpoint_path", "write_json", "read_json", "write_config",
           "cache_dir_for", "finite"]


def prepare_run(cfg: Mapping[str, Any], out: str | Path | None, resume: bool) -> Path:
    """Create (or, with ``resume``, reopen) a run directory and return it.

    A new run refuses a folder that already holds checkpoints, so that a finished run is
    never overwritten by accident.
    """
    run = run_path(cfg, out, resume)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run


def run_path(cfg: Mapping[str, Any], out: str | Path | None, resume: bool) -> Path:
    """The run directory ``prepare_run`` would use, checked but not created."""
    if out is None:
        if resume:
            raise InputError("--resume needs --out RUN naming the run to continue")
        out = Path("runs") / f"{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = Path(out)
    last = run / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise InputError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and last.is_file():
        raise InputError(f"{run} already holds a trained run; pass --resume to continue it or choose another --out")
    if run.exists() and not run.is_dir():
        raise InputError(f"--out {run}: exists and is not a folder")
    return run


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    """``RUN/checkpoints/{which}.pt``, falling back from best to last; InputError if neither exists."""
    folder = Path(run) / "checkpoints"
    for name in (which, "last") if which == "best" else (which,):
        path = folder / f"{name}.pt"
        if path.is_file():
            return path
    raise InputError(f"{run}: no checkpoint in {folder} (train the run first)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"{path}: cannot load checkpoint: {err}") from None


def cache_dir_for(cfg: Mapping[str, Any], run: Path) -> Path | None:
    """Where ``data.cache: disk`` keeps its files: ``data.cache_dir`` or ``RUN/cache``."""
    if cfg["data"]["cache"] != "disk":
        return None
    return Path(cfg["data"]["cache_dir"]) if cfg["data"].get("cache_dir") else run / "cache"


def finite(value: Any) -> Any:
    """NaN and infinities -> None, recursively, so that JSON stays valid."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(finite(payload), indent=2, default=float) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON: {err}") from None


def write_config(run: Path, cfg: Mapping[str, Any]) -> None:
    write_text_atomic(run / "config.yaml", dump_config(cfg))
