"""A trained run, loaded once for any run-based command: its validated config, family and network."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlatent import distributed as dist_utils
from medlatent import precision as precision_lib
from medlatent.commands.registry import FAMILIES, resolve
from medlatent.config import read_yaml_file
from medlatent.errors import InputError
from medlatent.family import Family
from medlatent.precision import Precision
from medlatent.runs import FINGERPRINT_FILE, checkpoint_path, load_checkpoint, read_json

__all__ = ["LoadedRun", "load_run", "load_run_config", "family_for_command"]


def _read_run_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.is_file():
        raise InputError(f"{run}: not a run directory (no config.yaml)")
    return read_yaml_file(path, what="run config")


def load_run_config(run: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated config a run was trained with (``RUN/config.yaml``), updated by ``overrides``."""
    run = Path(run)
    return resolve(_read_run_config(run), overrides, source=str(run / "config.yaml"))


def family_for_command(run: Path, raw: dict[str, Any], command: str) -> Family:
    """The family named by a run's raw config if it declares ``command``; InputError naming the commands it has."""
    model = raw.get("model")
    if model not in FAMILIES:
        raise InputError(f"{run / 'config.yaml'}: unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    family = FAMILIES[model]
    if command not in family.commands:
        raise InputError(f"{run}: '{command}' is not available for {model} runs; available: "
                         f"{', '.join(family.commands)}")
    return family


@dataclasses.dataclass
class LoadedRun:
    """A trained run ready for inference: the network (eval mode, on its device) and what built it."""

    run: Path
    cfg: dict[str, Any]
    family: Family
    model: nn.Module
    checkpoint: str
    epoch: int
    #: what every command's pass through the model runs in: ``precision.for_commands`` of the run's
    #: ``train.precision``/``channels_last`` resolved on this machine's device
    precision: Precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def data_cfg(self) -> dict[str, Any]:
        return self.cfg["data"]

    def inference(self, grad: bool = False) -> contextlib.AbstractContextManager:
        """Every command's pass through the model (in ``self.precision``), inference mode unless ``grad``.

        Outputs may come in bf16/fp16 on CUDA: cast what is kept or written with ``.float()``.
        """
        return precision_lib.inference(self.precision, grad=grad)

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any] | None:
        """What the training scans looked like (``RUN/fingerprint.json``), or None for a run trained before it existed."""
        path = self.run / FINGERPRINT_FILE
        return read_json(path) if path.is_file() else None


def load_run(run: str | Path, command: str, which: str = "best") -> LoadedRun:
    """Load ``checkpoints/{which}.pt`` (best, falling back to last) into the run's network.

    ``command`` is the command asking: a family that does not declare it is refused before
    anything is read.

    Raises:
        InputError: not a run, a command the run's family lacks, no checkpoint, or a checkpoint
            that does not fit the network its config describes (names the files).
    """
    run = Path(run)
    raw = _read_run_config(run)
    family = family_for_command(run, raw, command)  # before validating: the other family's run is named as such
    cfg = resolve(raw, source=str(run / "config.yaml"))
    model = family.build_network(run, cfg)
    path = checkpoint_path(run, which)
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise InputError(f"{path}: does not match the network in {run / 'config.yaml'}: {err}") from None
    device = dist_utils.pick_device()
    model.to(device).eval()
    precision = precision_lib.resolve(cfg["train"], device)
    precision_lib.prepare_model(model, precision)
    return LoadedRun(run, cfg, family, model, path.stem, int(state.get("epoch", 0)),
                     precision_lib.for_commands(precision))
