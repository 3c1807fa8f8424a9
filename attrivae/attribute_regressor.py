"""A supervised 3D regressor of a dataset's attributes from its scans: the independent judge of decoded traversals.

A traversal of ``hippocampus_mm3`` on IXI cannot be measured with a threshold, so a MONAI
``resnet18`` is trained on the real training scans, preprocessed exactly as the Attri-VAE saw
them (same grid, same [0, 1] intensities), to predict the attributes; it then reads them off
each decoded step (``traversal.measure_traversal``). It shares nothing with the Attri-VAE but
the data, so it cannot agree with the VAE's latent by construction. Training is small and
time-budgeted; its validation Spearman per attribute says how far its readings can be trusted.

Decoded volumes are smoother than scans, so a judge trained on scans reads them out of its
training distribution. ``view`` trains (and validates) it on what it will read instead, e.g. the
Attri-VAE's own reconstructions of the training scans; its Spearman on reconstructed test scans
then says how far it can be trusted on decoded steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.nets import resnet18
from scipy.stats import spearmanr
from torch import nn

from medlatent.engine import make_loader

__all__ = ["AttributeRegressor", "train_attribute_regressor"]


class AttributeRegressor(nn.Module):
    """MONAI ResNet-18 (3D, one input channel) -> one output per attribute, in min-max-scaled units.

    Args:
        names: the attributes predicted, in output order.
        minimum, maximum: per attribute, the training range used to scale targets to [0, 1].
    """

    def __init__(self, names: Sequence[str], minimum: Sequence[float], maximum: Sequence[float]) -> None:
        super().__init__()
        self.names = list(names)
        # stride-2 first convolution: a 48x64x48 scan costs a quarter of the full-resolution stem on CPU
        self.net = resnet18(spatial_dims=3, n_input_channels=1, num_classes=len(self.names), conv1_t_stride=2)
        self.register_buffer("minimum", torch.as_tensor(list(minimum), dtype=torch.float32))
        self.register_buffer("span", (torch.as_tensor(list(maximum), dtype=torch.float32) - self.minimum)
                             .clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, D, H, W] -> [B, A]`` scaled predictions."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Attributes of ``[S, 1, D, H, W]`` volumes in their own units: ``{name: [S]}``."""
        self.eval()
        device = self.minimum.device
        scaled = torch.cat([self(chunk.float().to(device)).cpu() for chunk in x.split(batch_size)])  # [S, A]
        values = scaled * self.span.cpu() + self.minimum.cpu()
        return {name: values[:, i].numpy().astype(np.float64) for i, name in enumerate(self.names)}


View = Callable[[torch.Tensor], torch.Tensor]


def _batches(dataset: Any, columns: Sequence[int], batch_size: int, shuffle: bool, seed: int, view: View | None = None):
    generator = torch.Generator().manual_seed(seed)
    for batch in make_loader(dataset, batch_size, 0, shuffle=shuffle, generator=generator):
        image = batch["image"].as_tensor().float()
        if view is not None:
            with torch.no_grad():
                image = view(image).float()
        yield image, batch["attrs"].float()[:, list(columns)]


def train_attribute_regressor(records: Mapping[str, Sequence[Mapping[str, Any]]], data_cfg: Mapping[str, Any],
                              all_names: Sequence[str], names: Sequence[str], minutes: float = 3.0,
                              max_epochs: int = 30, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                              device: torch.device | str | None = None,
                              view: View | None = None) -> tuple[AttributeRegressor, dict[str, Any]]:
    """Fit an :class:`AttributeRegressor` on ``records["train"]`` within ``minutes`` of wall time.

    Args:
        records: split -> records from ``transforms.records.load_split_records`` (``attrs`` in
            ``all_names`` order); ``val`` (if any) is scored after training.
        data_cfg: the run's ``data`` section, so scans are preprocessed as the Attri-VAE's were
            (augmentation included, in training).
        all_names: the names of ``record["attrs"]`` (``DataInfo.attributes``).
        names: the attributes to predict (e.g. the run's regularised ones).
        minutes: wall-time budget; training stops after the epoch that passes it (at least one epoch).
        max_epochs, batch_size, lr, seed: the optimisation (Adam, MSE on [0, 1]-scaled targets).
        view: ``[B, 1, D, H, W] -> [B, 1, D, H, W]`` applied to every training and validation batch
            (on CPU, without gradients), e.g. an Attri-VAE's reconstruction; ``None``: the scans.

    Returns:
        ``(regressor in eval mode, {"epochs", "seconds", "train_loss", "val_spearman": {name: rho}})``.
    """
    from medlatent.transforms.pipeline import make_dataset

    columns = [list(all_names).index(n) for n in names]
    train_records = list(records["train"])
    values = np.stack([np.asarray(r["attrs"], dtype=np.float64)[columns] for r in train_records])  # [N, A]
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = AttributeRegressor(names, values.min(0), values.max(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_set = make_dataset(train_records, data_cfg, train=True)
    started, epoch, loss_value = time.perf_counter(), 0, math.nan
    while epoch < max_epochs and (epoch == 0 or time.perf_counter() - started < 60.0 * minutes):
        model.train()
        losses = []
        for image, target in _batches(train_set, columns, batch_size, True, seed + epoch, view):
            scaled = (target.to(device) - model.minimum) / model.span
            loss = nn.functional.mse_loss(model(image.to(device)), scaled)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch += 1
        loss_value = float(np.mean(losses))
    model.eval()
    report: dict[str, Any] = {"epochs": epoch, "seconds": time.perf_counter() - started, "train_loss": loss_value,
                              "val_spearman": {}}
    val_records = list(records.get("val", []))
    if len(val_records) > 2:
        predicted, truth = [], []
        for image, target in _batches(make_dataset(val_records, data_cfg, train=False), columns, batch_size, False,
                                      seed, view):
            read = model.predict(image)  # one forward pass for every attribute
            predicted.append(np.stack([read[n] for n in names], 1))
            truth.append(target.numpy())
        predicted_all, truth_all = np.concatenate(predicted), np.concatenate(truth)
        report["val_spearman"] = {n: float(np.nan_to_num(spearmanr(truth_all[:, i], predicted_all[:, i])[0]))
                                  for i, n in enumerate(names)}
    return model, report
