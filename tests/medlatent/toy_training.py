"""A tiny autoencoder Task on random volumes, to test the engine without the data layer.

Run as a script for the kill-and-resume test: ``python toy_training.py RUN [--resume] [--step-sleep S]``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from torch import nn

from medlatent.blocks import Decoder3d, Encoder3d
from medlatent.config import TrainSection, section_defaults
from medlatent.engine import Task, fit, seed_everything
from medlatent.metrics import reconstruction_metrics
from medlatent.precision import full_precision


class ToyAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder3d(1, [4, 8], 4, num_res_units=1)
        self.decoder = Decoder3d(4, [8, 4], 1, num_res_units=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ToyTask(Task):
    curve_metrics = ("loss", "mae", "ssim")

    def __init__(self, step_sleep: float = 0.0) -> None:
        self.model = ToyAutoencoder()
        self.step_sleep = step_sleep

    def training_step(self, model, batch):
        # noise from the global RNG, so the test sees whether resume restores it
        noisy = batch["image"] + 0.05 * torch.randn_like(batch["image"])
        loss = nn.functional.mse_loss(model(noisy).float(), batch["image"])
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return loss, {"loss": loss.item()}

    def validation_step(self, model, batch):
        recon = model(batch["image"])
        with full_precision(recon):
            values = reconstruction_metrics(recon, batch["image"], data_range=1.0)
            values["loss"] = (recon.float() - batch["image"]).pow(2).flatten(1).mean(1)
        return values

    def preview(self, model, batch):
        return [("original", batch["image"][0]), ("reconstruction", model(batch["image"][:1])[0])]


def toy_dataset(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 16)] * 3, indexing="ij"))
    items = []
    for i in range(n):
        center = torch.rand(3, 1, 1, 1, generator=generator) - 0.5
        blob = torch.exp(-((grid - center) ** 2).sum(0) * 6.0)
        items.append({"image": blob.unsqueeze(0).float(), "subject": f"toy{i:02d}"})
    return items


def toy_config(epochs: int = 3, **train) -> dict:
    cfg = section_defaults({"train": TrainSection})  # the engine reads the train section only
    cfg["train"].update(epochs=epochs, batch_size=4, lr=3e-3, best_metric="val_ssim", best_mode="max")
    cfg["train"].update(train)
    return cfg


def run(run_dir: str, resume: bool = False, epochs: int = 3, step_sleep: float = 0.0, train_set: list | None = None,
        **train) -> ToyTask:
    seed_everything(0)
    task = ToyTask(step_sleep)
    train_set = toy_dataset(16, 0) if train_set is None else train_set
    fit(task, train_set, toy_dataset(4, 1), toy_config(epochs, **train), run_dir, resume=resume)
    return task


def csv_rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args()
    task = run(args.run, args.resume, args.epochs, args.step_sleep)
    torch.save(task.model.state_dict(), f"{args.run}/final_weights.pt")
