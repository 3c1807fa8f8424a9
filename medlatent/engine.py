"""The one training loop both model families use.

A family describes *what* a step computes with a ``Task`` (loss, per-volume validation
figures, a preview); the engine owns *how* training runs: optimiser and schedule,
device, precision and layout (medlatent/precision.py), DDP under ``torchrun``, seeding, validation each epoch, ``metrics.csv``,
TensorBoard, figures, atomic ``last.pt``/``best.pt`` and ``--resume``.

Determinism: every random draw of epoch ``e`` on rank ``r`` (shuffling, augmentation,
sampling noise, code restarts) comes from generators seeded with ``(seed, e, r)`` at the
start of the epoch, so a run resumed from the checkpoint of epoch ``e - 1`` replays
epoch ``e`` exactly as the uninterrupted run did, unless ``train.max_minutes`` drives the
schedule or the stop (wall-clock time does not replay).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, list_data_collate
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler
from tqdm.auto import tqdm

from medlatent import distributed as dist_utils
from medlatent import precision as precision_lib
from medlatent.errors import InputError
from medlatent.figures import save_curves, save_slice_grid
from medlatent.io import atomic_path, write_text_atomic
from medlatent.precision import Precision
from medlatent.runs import load_checkpoint

__all__ = ["Task", "fit", "run_evaluation", "check_finite_loss", "seed_everything", "to_device", "make_loader"]


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
    """Seed Python, NumPy and torch (all devices) with MONAI's ``set_determinism``.

    The same seeds as before for seeds under 2^32 (``random.seed``, ``np.random.seed``,
    ``torch.manual_seed``); it also asks cuDNN for deterministic algorithms (no benchmark mode).
    """
    set_determinism(seed=seed)


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
                sampler: Any = None, generator: torch.Generator | None = None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A MONAI DataLoader with the collate function that keeps MetaTensor metadata.

    ``pin_memory`` (for CUDA): batches in page-locked memory, so ``to_device``'s non-blocking copy overlaps.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=generator, drop_last=drop_last, pin_memory=pin_memory,
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


def check_finite_loss(loss: torch.Tensor, batch: dict[str, Any], where: str, after: str = "",
                      distributed: bool = False) -> None:
    """Raise InputError if ``loss`` (scalar or ``[B]`` per volume) holds NaN/Inf, naming the subjects concerned.

    A per-volume loss names exactly the volumes that are not finite; a batch loss names the
    whole batch. ``after`` ends the message (what happens to the run). With ``distributed``
    every rank learns whether any rank failed, so all stop together instead of hanging.
    """
    finite = torch.isfinite(loss.detach()).reshape(-1)
    stop = not bool(finite.all())
    if distributed:
        flag = torch.tensor([float(stop)], dtype=torch.float64)
        stop = dist_utils.all_reduce_max(flag).item() > 0
    if not stop:
        return
    subjects = list(batch.get("subject") or [])
    if bool(finite.all()):
        culprits = "on another rank's batch"
    elif not subjects:
        culprits = "on a batch without subject names"
    else:
        if len(finite) == len(subjects):
            subjects = [s for s, ok in zip(subjects, finite.tolist()) if not ok]
        culprits = f"on subject(s) {', '.join(map(str, subjects))}"
    raise InputError(f"non-finite loss {where} {culprits}: check those volumes for NaN/Inf voxels "
                     f"(medlatent data check) or lower train.lr{after}")


def run_evaluation(task: Task, model: nn.Module, loader: Iterable, device: torch.device,
                   precision: Precision | None = None, progress: str | None = None,
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One pass of ``task.validation_step`` over ``loader`` in inference mode, in ``precision`` (default fp32).

    Returns the mean of every per-volume figure plus the task's epoch-level figures, and
    one row per volume (``subject`` first) for ``per_subject.csv``.

    Raises:
        InputError: a non-finite ``loss`` of a volume, naming the batch's subjects.
    """
    precision = precision or Precision(device.type)
    model.eval()
    task.epoch_start("val")
    rows: list[dict[str, Any]] = []
    with precision_lib.inference(precision):
        for batch in tqdm(loader, desc=progress, disable=progress is None or not dist_utils.is_main(), leave=False):
            batch = precision_lib.to_layout(to_device(batch, device), precision)
            values = task.validation_step(model, batch)
            if "loss" in values:
                check_finite_loss(values["loss"], batch, f"in {progress or 'validation'}")
            subjects = batch.get("subject") or [f"#{len(rows) + i}" for i in range(len(next(iter(values.values()))))]
            for i, subject in enumerate(subjects):
                rows.append({"subject": subject, **{k: float(v[i]) for k, v in values.items()}})
    means = {k: float(np.nanmean([r[k] for r in rows])) for k in (rows[0] if rows else {}) if k != "subject"}
    means.update(task.epoch_end("val"))
    return means, rows


def _write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    # pandas orders the columns as they first appear; a row without a column leaves its cell empty
    write_text_atomic(path, pd.DataFrame(history).to_csv(index=False))


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
    (best ``train.best_metric``), ``metrics.csv`` (with the precision and layout used),
    ``tb/`` and ``figures/``. With ``resume`` it continues after the last completed epoch of
    ``checkpoints/last.pt``. Training ends after ``train.epochs`` or once the run's time (over
    all its invocations, validation included) passes ``train.max_minutes``; ``train.schedule``
    follows whichever comes first (``lr_factor``). Returns the per-epoch history (also in
    ``metrics.csv``).

    Raises:
        InputError: a non-finite loss on a training or validation batch (naming its subjects);
            the checkpoints of earlier epochs are kept, nothing of the failing epoch is saved.
    """
    trainer = _Trainer(task, train_set, val_set, cfg, Path(run_dir))
    if resume:
        trainer.restore()
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer.history


class _Trainer:
    """The state of one :func:`fit` call, its steps as methods: restore, train (epochs), checkpoint."""

    def __init__(self, task: Task, train_set: Dataset, val_set: Dataset | None, cfg: dict[str, Any],
                 run_dir: Path) -> None:
        self.task, self.train_set, self.cfg, self.run_dir = task, train_set, cfg, run_dir
        self.train_cfg = train_cfg = cfg["train"]
        self.distributed = dist_utils.init_distributed()
        self.rank, self.main = dist_utils.rank(), dist_utils.is_main()
        self.device = dist_utils.pick_device()
        self.precision = precision_lib.resolve(train_cfg, self.device)
        self.seed = int(train_cfg["seed"])
        self.model = precision_lib.prepare_model(task.model.to(self.device), self.precision)
        self.optimizer = _optimizer(self.model.parameters(), train_cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.history: list[dict[str, float]] = []
        self.skipped_steps = 0
        self.best: float | None = None
        self.start_epoch = 0
        self.seconds_before = 0.0  # training time of earlier invocations of this run (--resume)
        self.ckpt_dir = run_dir / "checkpoints"
        self.train_model = self._training_model()
        self.sampler = DistributedSampler(train_set, shuffle=True, seed=self.seed, drop_last=True) \
            if self.distributed else None
        self.generator = torch.Generator()
        batch_size, workers = int(train_cfg["batch_size"]), int(train_cfg["num_workers"])
        pin = self.device.type == "cuda"  # page-locked batches let the copy to the GPU overlap the step
        self.train_loader = make_loader(train_set, batch_size, workers, shuffle=True, sampler=self.sampler,
                                        generator=self.generator, pin_memory=pin,
                                        drop_last=len(train_set) // dist_utils.world_size() > batch_size)
        self.val_loader = make_loader(val_set, batch_size, workers, pin_memory=pin) \
            if val_set is not None and len(val_set) else None
        self.budget_s = float(train_cfg["max_minutes"]) * 60 if train_cfg.get("max_minutes") else math.inf
        self.epochs = int(train_cfg["epochs"])
        self.writer: Any = None
        self.started = time.perf_counter()

    def _training_model(self) -> nn.Module:
        model: nn.Module = self.model
        if self.distributed:
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.precision.compile:
            model = torch.compile(model)
        return model

    def restore(self) -> None:
        """Continue from ``checkpoints/last.pt``: weights, optimiser, scaler, history, best and time spent."""
        state = load_checkpoint(self.ckpt_dir / "last.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.history, self.best = int(state["epoch"]), list(state["history"]), state["best"]
        # checkpoints written before the budget spanned resumes lack it: they get a fresh budget
        self.seconds_before = float(state.get("train_seconds", 0.0))

    def run_seconds(self) -> float:
        """Training time of the run so far, the same on every rank."""
        seconds = torch.tensor([self.seconds_before + time.perf_counter() - self.started], dtype=torch.float64)
        if math.isfinite(self.budget_s):
            # every rank must see the same clock, or they pick different learning rates and
            # leave the loop at different steps (a DDP hang)
            dist_utils.all_reduce_max(seconds)
        return float(seconds)

    def train(self) -> None:
        """Epochs from ``start_epoch`` until ``train.epochs`` or the time budget."""
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"),
                                        purge_step=self.start_epoch + 1 if self.start_epoch else None)
            self.writer.add_text("precision", self.precision.describe(), self.start_epoch + 1)
            print(f"precision: {self.precision.describe()}")
        self.started = time.perf_counter()
        for epoch in range(self.start_epoch, self.epochs):
            if self.run_seconds() >= self.budget_s:  # a resumed run whose budget is already spent
                break
            epoch_started = time.perf_counter()
            row = self._train_epoch(epoch)
            is_best = self._validate_and_log(row, epoch_started) if self.main else False
            # one clock reading decides the stop and is what the checkpoint keeps, so a run stopped
            # on its budget is still out of time when resumed (validation and figures count too)
            elapsed = self.run_seconds()
            if self.main:
                self._checkpoint(epoch, elapsed, is_best)
            dist_utils.barrier()
            if elapsed >= self.budget_s:  # every rank read the same clock, so all stop here together
                break

    def _seed_epoch(self, epoch: int) -> None:
        epoch_seed = _epoch_seed(self.seed, epoch, self.rank)
        seed_everything(epoch_seed)
        self.generator.manual_seed(epoch_seed)
        # MONAI random transforms keep their own RandomState; with num_workers=0 the
        # DataLoader seeds it only once, so reseed it every epoch for exact resume
        set_rnd(self.train_set, epoch_seed)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's row of ``metrics.csv`` so far."""
        self._seed_epoch(epoch)
        self.train_model.train()
        self.task.epoch_start("train")
        sums: dict[str, float] = defaultdict(float)
        count = 0
        steps = max(1, len(self.train_loader))
        elapsed = self.run_seconds()
        for step, batch in enumerate(tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}",
                                          disable=not self.main, leave=False)):
            # the schedule follows whichever ends the run first, the epochs or the time budget, so a
            # budgeted run (epochs set far too high) still anneals; set per step, as a budget may
            # end inside the first epoch
            progress = max((epoch + step / steps) / self.epochs, elapsed / self.budget_s)
            logs = self._step(batch, progress, f"at epoch {epoch + 1}, step {step + 1}")
            size = _batch_size(batch)
            for key, value in logs.items():
                sums[key] += float(value) * size
            count += size
            elapsed = self.run_seconds()
            if elapsed > self.budget_s:
                break
        totals = torch.tensor([count] + [sums[k] for k in sorted(sums)], dtype=torch.float64)
        dist_utils.all_reduce_sum(totals)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train_{k}": float(v / max(totals[0], 1)) for k, v in zip(sorted(sums), totals[1:])})
        row.update({f"train_{k}": v for k, v in self.task.epoch_end("train").items()})
        row["train_volumes"] = float(totals[0])
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["skipped_steps"] = self.skipped_steps  # updates skipped for non-finite gradients, this invocation
        row.update(self.precision.record())
        return row

    def _step(self, batch: dict[str, Any], progress: float, where: str) -> dict[str, float]:
        """Forward in the run's precision, the NaN/Inf guard, backward (scaled for fp16), clip, optimiser step."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.train_cfg["lr"]) * lr_factor(self.train_cfg["schedule"], progress)
        batch = precision_lib.to_layout(to_device(batch, self.device), self.precision)
        with precision_lib.autocast(self.precision):
            loss, logs = self.task.training_step(self.train_model, batch)
        check_finite_loss(loss, batch, where, after=_KEPT, distributed=self.distributed)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not self.scaler.is_enabled() and not _finite_gradients(self.model):
            # a finite loss with non-finite gradients: skip the update, as the fp16 scaler does. Seen
            # with bf16 autocast on CPU: oneDNN's bf16 weight gradient of a 3x3x3 convolution on a
            # 2x2x2 grid is sometimes NaN (torch 2.13); DDP has reduced the gradients, so every rank skips
            self.skipped_steps += 1
            return logs
        if self.train_cfg.get("grad_clip"):
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.train_cfg["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logs

    def _validate_and_log(self, row: dict[str, Any], epoch_started: float) -> bool:
        """Validation, the metrics row, figures and TensorBoard (rank 0); True if the epoch is the best so far."""
        if self.val_loader is not None:
            val_means, _ = run_evaluation(self.task, self.model, self.val_loader, self.device, self.precision)
            row.update({f"val_{k}": v for k, v in val_means.items()})
        row["epoch_seconds"] = time.perf_counter() - epoch_started
        self.history.append(row)
        value = row.get(self.train_cfg["best_metric"])
        is_best = _improved(value, self.best, self.train_cfg["best_mode"])
        if is_best:
            self.best = value
        _write_metrics_csv(self.run_dir / "metrics.csv", self.history)
        _log_epoch(self.writer, self.task, self.model, self.val_loader, self.device, self.history, self.run_dir,
                   self.cfg, self.precision)
        return is_best

    def _checkpoint(self, epoch: int, elapsed: float, is_best: bool) -> None:
        """``last.pt`` (and ``best.pt``), refused if any weight is not finite: a NaN model never overwrites a good one."""
        state = self.model.state_dict()
        broken = [name for name, tensor in state.items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if broken:
            raise InputError(f"epoch {epoch + 1}: non-finite weights ({', '.join(broken[:5])}) with finite losses; "
                             f"lower train.lr or set train.grad_clip{_KEPT}")
        payload = {"model": state, "optimizer": self.optimizer.state_dict(), "epoch": epoch + 1,
                   "history": self.history, "best": self.best, "train_seconds": elapsed}
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        _save_checkpoint(self.ckpt_dir / "last.pt", payload)
        if is_best:
            _save_checkpoint(self.ckpt_dir / "best.pt", payload)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finite_gradients(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (one device sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


_KEPT = "; the run stopped and the checkpoints of earlier epochs are kept"


def _log_epoch(writer: Any, task: Task, model: nn.Module, val_loader: Any, device: torch.device,
               history: list[dict[str, float]], run_dir: Path, cfg: dict[str, Any], precision: Precision) -> None:
    row = history[-1]
    epoch = int(row["epoch"])
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key.replace("_", "/", 1), value, epoch)
    save_curves(history, run_dir / "figures" / "curves.png", task.curve_metrics)
    if not cfg["train"].get("preview", True) or val_loader is None:
        return
    model.eval()
    with precision_lib.inference(precision):
        batch = precision_lib.to_layout(to_device(next(iter(val_loader)), device), precision)
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

