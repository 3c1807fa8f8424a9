"""Run directories: where a training run keeps its config, checkpoints, metrics and exports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from medlatent.config import dump_config, read_yaml, resolve
from medlatent.errors import InputError
from medlatent.io import write_text_atomic

__all__ = ["prepare_run", "load_run_config", "load_checkpoint", "checkpoint_path", "write_json", "read_json", "write_config"]


def prepare_run(cfg: dict[str, Any], out: str | Path | None, resume: bool) -> Path:
    """Create (or, with ``resume``, reopen) a run directory and return it.

    A new run refuses a folder that already holds checkpoints, so that a finished run is
    never overwritten by accident.
    """
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
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run


def load_run_config(run: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config a run was trained with (``RUN/config.yaml``), updated by ``overrides``."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{run}: not a run directory (no config.yaml)")
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    return resolve(raw, overrides, source=str(path))


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


def write_json(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=float) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"missing file: {path}")
    return json.loads(path.read_text())


def write_config(run: Path, cfg: dict[str, Any]) -> None:
    write_text_atomic(run / "config.yaml", dump_config(cfg))
