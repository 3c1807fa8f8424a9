"""The one training loop both model families use.

A family describes *what* a step computes with a ``Task`` (loss, per-volume validation
figures, a preview); the engine owns *how* training runs: optimiser and schedule,
device and AMP, DDP under ``torchrun``, seeding, validation each epoch, ``metrics.csv``,
TensorBoard, figures, atomic ``last.pt``/``best.pt`` and ``--resume``.

Determinism: every random draw of epoch ``e`` on rank ``r`` (shuffling, augmentation,
sampling noise, code restarts) comes from generators seeded with ``(seed, e, r)`` at the
start of the epoch, so a run resumed from the checkpoint of epoch ``e - 1`` replays
epoch ``e`` exactly as the uninterrupted run did, unless ``train.max_minutes`` drives the
schedule or the stop (wall-clock time does not replay).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, list_data_collate
from monai.data.utils import set_rnd
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler
from tqdm.auto import tqdm

from medlatent import distributed as dist_utils
from medlatent.errors import InputError
from medlatent.figures import save_curves, save_slice_grid
from medlatent.io import atomic_path, write_text_atomic
from medlatent.runs import load_checkpoint

__all__ = ["Task", "fit", "run_evaluation", "seed_everything", "to_device", "make_loader"]


class Task:
    """What one family's training computes. Subclasses set ``model`` and override the steps.

    ``training_step`` returns the loss to minimise and scalar logs; ``validation_step``
    returns per-volume figures as ``[B]`` tensors (averaged per epoch and written per
    subject by ``evaluate``). ``epoch_start``/``epoch_end`` let a task accumulate
    epoch-level statistics such as codebook usage; ``preview`` returns named volumes
    for the per-epoch figure.
    """

    model: nn.Module
    #: metrics plotted in figures/curves.png (names without the train_/val_ prefix)
    curve_metrics: tuple[str, ...] = ("loss",)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def epoch_start(self, stage: str) -> None:
        """Called on every rank before a train or val pass."""

    def epoch_end(self, stage: str) -> dict[str, float]:
        """Called on every rank after a pass; returns epoch-level figures (no prefix)."""
        return {}

    def preview(self, model: nn.Module, batch: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        """Named ``[C, D, H, W]`` volumes of the first item of ``batch`` for the figures."""
        return []


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank * 7919) % 2**31


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
                sampler: Any = None, generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    """A MONAI DataLoader with the collate function that keeps MetaTensor metadata."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=generator, drop_last=drop_last,
                      collate_fn=list_data_collate, persistent_workers=False)


def _batch_size(batch: dict[str, Any]) -> int:
    return len(next(v for v in batch.values() if isinstance(v, (torch.Tensor, list))))


def _optimizer(params: Iterable[nn.Parameter], train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = train_cfg["optimizer"]
    if name == "adam":
        return torch.optim.Adam(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    raise InputError(f"config key train.optimizer must be adam or adamw, got {name!r}")


SCHEDULES = ("none", "cosine", "step")


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of ``train.lr`` at ``progress`` (0 at the start of the run, 1 at its end).

    ``step`` multiplies by 0.3 at each third of the run; ``cosine`` anneals to 0.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.3 ** min(2, int(3 * progress))
    raise InputError(f"config key train.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _autocast(device: torch.device, enabled: bool):
    # bfloat16 needs no loss scaling, so the loop stays the same on CPU and GPU
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_evaluation(task: Task, model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False,
                   progress: str | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One pass of ``task.validation_step`` over ``loader`` without gradients.

    Returns the mean of every per-volume figure plus the task's epoch-level figures, and
    one row per volume (``subject`` first) for ``per_subject.csv``.
    """
    model.eval()
    task.epoch_start("val")
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in tqdm(loader, desc=progress, disable=progress is None or not dist_utils.is_main(), leave=False):
            batch = to_device(batch, device)
            with _autocast(device, amp):
                values = task.validation_step(model, batch)
            subjects = batch.get("subject") or [f"#{len(rows) + i}" for i in range(len(next(iter(values.values()))))]
            for i, subject in enumerate(subjects):
                rows.append({"subject": subject, **{k: float(v[i]) for k, v in values.items()}})
    means = {k: float(np.nanmean([r[k] for r in rows])) for k in (rows[0] if rows else {}) if k != "subject"}
    means.update(task.epoch_end("val"))
    return means, rows


def _write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(task: Task, train_set: Dataset, val_set: Dataset | None, cfg: dict[str, Any], run_dir: str | Path,
        resume: bool = False) -> list[dict[str, float]]:
    """Train ``task.model`` on ``train_set`` and validate on ``val_set`` each epoch.

    Writes into ``run_dir``: ``checkpoints/last.pt`` (every epoch), ``checkpoints/best.pt``
    (best ``train.best_metric``), ``metrics.csv``, ``tb/`` and ``figures/``. With
    ``resume`` it continues after the last completed epoch of ``checkpoints/last.pt``.
    Training ends after ``train.epochs`` or once the run's time (over all its invocations,
    validation included) passes ``train.max_minutes``; ``train.schedule`` follows whichever
    comes first (``lr_factor``). Returns the per-epoch history (also in ``metrics.csv``).
    """
    run_dir = Path(run_dir)
    train_cfg = cfg["train"]
    distributed = dist_utils.init_distributed()
    rank, main = dist_utils.rank(), dist_utils.is_main()
    device = dist_utils.pick_device()
    amp = bool(train_cfg["amp"]) and device.type == "cuda"
    seed = int(train_cfg["seed"])

    model = task.model.to(device)
    optimizer = _optimizer(model.parameters(), train_cfg)
    schedule, base_lr = train_cfg["schedule"], float(train_cfg["lr"])
    history: list[dict[str, float]] = []
    best: float | None = None
    start_epoch = 0
    seconds_before = 0.0  # training time of earlier invocations of this run (--resume)
    ckpt_dir = run_dir / "checkpoints"
    if resume:
        state = load_checkpoint(ckpt_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = int(state["epoch"]), list(state["history"]), state["best"]
        # checkpoints written before the budget spanned resumes lack it: they get a fresh budget
        seconds_before = float(state.get("train_seconds", 0.0))

    train_model: nn.Module = model
    if distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=True) if distributed else None
    generator = torch.Generator()
    batch_size = int(train_cfg["batch_size"])
    train_loader = make_loader(train_set, batch_size, int(train_cfg["num_workers"]), shuffle=True, sampler=sampler,
                               generator=generator, drop_last=len(train_set) // dist_utils.world_size() > batch_size)
    val_loader = make_loader(val_set, batch_size, int(train_cfg["num_workers"])) if val_set is not None and len(val_set) else None

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if resume else None)
    budget_s = float(train_cfg["max_minutes"]) * 60 if train_cfg.get("max_minutes") else math.inf
    epochs = int(train_cfg["epochs"])
    started = time.perf_counter()

    def run_seconds() -> float:
        seconds = torch.tensor([seconds_before + time.perf_counter() - started], dtype=torch.float64)
        if math.isfinite(budget_s):
            # every rank must see the same clock, or they pick different learning rates and
            # leave the loop at different steps (a DDP hang)
            dist_utils.all_reduce_max(seconds)
        return float(seconds)

    best_key, best_mode = train_cfg["best_metric"], train_cfg["best_mode"]

    for epoch in range(start_epoch, epochs):
        if run_seconds() >= budget_s:  # a resumed run whose budget is already spent
            break
        epoch_seed = _epoch_seed(seed, epoch, rank)
        seed_everything(epoch_seed)
        generator.manual_seed(epoch_seed)
        # MONAI random transforms keep their own RandomState; with num_workers=0 the
        # DataLoader seeds it only once, so reseed it every epoch for exact resume
        set_rnd(train_set, epoch_seed)
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_started = time.perf_counter()
        train_model.train()
        task.epoch_start("train")
        sums: dict[str, float] = defaultdict(float)
        count = 0
        steps = max(1, len(train_loader))
        elapsed = run_seconds()
        for step, batch in enumerate(tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not main,
                                          leave=False)):
            # the schedule follows whichever ends the run first, the epochs or the time budget, so a
            # budgeted run (epochs set far too high) still anneals; set per step, as a budget may
            # end inside the first epoch
            progress = max((epoch + step / steps) / epochs, elapsed / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(schedule, progress)
            batch = to_device(batch, device)
            with _autocast(device, amp):
                loss, logs = task.training_step(train_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.get("grad_clip"):
                nn.utils.clip_grad_norm_(model.parameters(), float(train_cfg["grad_clip"]))
            optimizer.step()
            size = _batch_size(batch)
            for key, value in logs.items():
                sums[key] += float(value) * size
            count += size
            elapsed = run_seconds()
            if elapsed > budget_s:
                break
        totals = torch.tensor([count] + [sums[k] for k in sorted(sums)], dtype=torch.float64)
        dist_utils.all_reduce_sum(totals)
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train_{k}": float(v / max(totals[0], 1)) for k, v in zip(sorted(sums), totals[1:])})
        row.update({f"train_{k}": v for k, v in task.epoch_end("train").items()})
        row["train_volumes"] = float(totals[0])
        row["lr"] = optimizer.param_groups[0]["lr"]

        if main:
            if val_loader is not None:
                val_means, _ = run_evaluation(task, model, val_loader, device, amp)
                row.update({f"val_{k}": v for k, v in val_means.items()})
            row["epoch_seconds"] = time.perf_counter() - epoch_started
            history.append(row)
            value = row.get(best_key)
            is_best = _improved(value, best, best_mode)
            if is_best:
                best = value
            _write_metrics_csv(run_dir / "metrics.csv", history)
            _log_epoch(writer, task, model, val_loader, device, history, run_dir, cfg)
        # one clock reading decides the stop and is what the checkpoint keeps, so a run stopped
        # on its budget is still out of time when resumed (validation and figures count too)
        elapsed = run_seconds()
        if main:
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                       "history": history, "best": best, "train_seconds": elapsed}
            _save_checkpoint(ckpt_dir / "last.pt", payload)
            if is_best:
                _save_checkpoint(ckpt_dir / "best.pt", payload)
        dist_utils.barrier()
        if elapsed >= budget_s:  # every rank read the same clock, so all stop here together
            break
    if writer is not None:
        writer.close()
    return history


def _log_epoch(writer: Any, task: Task, model: nn.Module, val_loader: Any, device: torch.device,
               history: list[dict[str, float]], run_dir: Path, cfg: dict[str, Any]) -> None:
    row = history[-1]
    epoch = int(row["epoch"])
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key.replace("_", "/", 1), value, epoch)
    save_curves(history, run_dir / "figures" / "curves.png", task.curve_metrics)
    if not cfg["train"].get("preview", True) or val_loader is None:
        return
    model.eval()
    with torch.no_grad():
        batch = to_device(next(iter(val_loader)), device)
        volumes = task.preview(model, batch)
    if not volumes:
        return
    names = [name for name, _ in volumes]
    tensors = [volume.float().cpu() for _, volume in volumes]
    subject = batch.get("subject", ["?"])[0]
    save_slice_grid(tensors, names, run_dir / "figures" / f"recon_epoch{epoch:03d}.png",
                    title=f"epoch {epoch}: {subject}")
    for name, volume in zip(names, tensors):
        mid = volume[0, :, :, volume.shape[-1] // 2].T.flip(0)
        lo, hi = float(mid.min()), float(mid.max())
        writer.add_image(f"preview/{name}", ((mid - lo) / (hi - lo + 1e-8)).unsqueeze(0), epoch)

