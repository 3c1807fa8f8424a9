"""The model-family contract: what a family hands the command layer, and nothing about commands.

A family (``vqvae3d``, ``attrivae``) builds one :class:`Family` in its ``family.py``; the
command layer (``medlatent.commands.registry``) lists them by name. Everything here works on
configs, tensors and run folders the family itself wrote; paths of user inputs and outputs stay
in the command layer. See docs/architecture.md, "The family contract".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlatent.config import Section
from medlatent.engine import Task

__all__ = ["Family"]


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: the config's ``model`` value.
        sections: the family's own config sections (``net``, ``loss``), typed.
        overrides: the family's defaults for common sections, e.g. ``{"train": {"best_metric": "val_ssim"}}``.
        check: cross-section checks on a validated config (InputError naming the keys), e.g. a
            spatial size the network's downsampling divides.
        build_task: ``(cfg, info, run_dir, records) -> Task``: the model to train and its steps;
            ``info`` is the data layer's ``DataInfo``, ``records`` the split records (a family may fit
            and save, say, an attribute scaler on the training split in ``run_dir``).
        build_network: ``(run_dir, cfg) -> nn.Module``: the untrained network of a run (reading what
            ``build_task`` saved there); the command layer loads the checkpoint's weights into it.
        reconstruct: ``(model, x [B, 1, D, H, W]) -> [B, 1, D, H, W]`` in model space.
        features: ``(model, x [1, 1, D, H, W]) -> (columns, arrays)``: one scan's pooled latent
            features as named floats (``encode``, ``latent-map``, ``probe``) and named arrays
            (code grids, the latent mean) that ``encode --codes`` saves.
        evaluation_task: ``(run_dir, cfg, model, records) -> Task`` whose ``validation_step`` gives
            per-volume figures on a split's ``records``.
        summarize: ``(task, means, rows) -> metrics`` after a pass: the figures written to
            ``eval/metrics.json`` (split-level ones such as AUC included).
        commands: the run-based commands this family supports (the CLI refuses the others).
    """

    name: str
    sections: Mapping[str, type[Section]]
    overrides: Mapping[str, Mapping[str, Any]]
    check: Callable[[dict[str, Any]], None]
    build_task: Callable[[dict[str, Any], Any, Path, Mapping[str, Sequence[Mapping[str, Any]]]], Task]
    build_network: Callable[[Path, dict[str, Any]], nn.Module]
    reconstruct: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    features: Callable[[nn.Module, torch.Tensor], tuple[dict[str, float], dict[str, np.ndarray]]]
    evaluation_task: Callable[[Path, dict[str, Any], nn.Module, Sequence[Mapping[str, Any]]], Task]
    summarize: Callable[[Task, dict[str, float], list[dict[str, Any]]], dict[str, Any]]
    commands: tuple[str, ...]
