"""What one Attri-VAE training or validation step computes, for ``medlatent.engine.fit``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medlatent.attrivae.attributes import AttributeMap
from medlatent.attrivae.disentanglement import METRIC_KEYS, disentanglement_report
from medlatent.attrivae.losses import attrivae_loss
from medlatent.attrivae.model import AttriVAE
from medlatent.engine import Task
from medlatent.metrics import reconstruction_metrics
from medlatent.precision import full_precision

__all__ = ["AttriVAETask", "plain"]


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor (no metadata tracking in the model's hot path)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class AttriVAETask(Task):
    """Loss = recon + beta KL + gamma AR + alpha classification; validation adds the split-level figures.

    ``validation_step`` returns per-volume terms and reconstruction metrics and keeps each
    volume's ``mu``, attributes and class probabilities; ``epoch_end("val")`` turns them into
    accuracy, AUC and the disentanglement metrics of the whole split (see
    ``attrivae.disentanglement``). The full report of the last validation pass is kept in
    ``self.report`` for ``evaluate``.

    Args:
        model: the network.
        attributes: the run's attribute map (scaler and latent-dim ties).
        loss_cfg: the config's ``loss`` section (beta, gamma, delta, alpha).
        detailed: also return label, prediction, probability, raw attributes and the
            regularised latent values per volume (for ``per_subject.csv``).
    """

    curve_metrics = ("loss", "recon", "kl", "ar", "cls", "ssim", "accuracy", "auc", "scc", "interpretability", "mig")

    def __init__(self, model: AttriVAE, attributes: AttributeMap, loss_cfg: Mapping[str, Any], detailed: bool = False) -> None:
        self.model = model
        self.attributes = attributes
        self.weights = {k: float(loss_cfg[k]) for k in ("beta", "gamma", "delta", "alpha")}
        self.detailed = detailed
        self.report: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._mu: list[np.ndarray] = []
        self._attrs: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def _loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any], x: torch.Tensor) -> dict[str, torch.Tensor]:
        amap = self.attributes
        scaled = None
        if amap.regularized and batch.get("attrs") is not None:
            scaled = amap.scale(plain(batch["attrs"]).float())[:, amap.columns]  # [B, A_reg]
        labels = plain(batch["label"]).long() if batch.get("label") is not None and "logits" in out else None
        return attrivae_loss(out, x, scaled, labels, amap.dims, **self.weights)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x = plain(batch["image"]).float()
        out = model(x)  # z sampled in training mode
        terms = self._loss(out, batch, x)
        logs = {k: float(v.detach().mean()) for k, v in terms.items()}
        if "logits" in out and batch.get("label") is not None:
            logs["accuracy"] = float((_predict(out["logits"]) == plain(batch["label"]).view(-1)).float().mean())
        return terms["loss"].mean(), logs

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = plain(batch["image"]).float()
        out = model(x, sample=False)  # z = mu: the deterministic representation
        values = {k: v.detach().cpu() for k, v in self._loss(out, batch, x).items()}
        with full_precision(x):  # metrics in fp32 under autocast
            values.update(reconstruction_metrics(out["recon"], x))
        mu = out["mu"].detach().float().cpu()
        self._mu.append(mu.numpy())
        if batch.get("attrs") is not None and self.attributes.names:
            self._attrs.append(self.attributes.scale(plain(batch["attrs"]).float().cpu()).numpy())
        if "logits" in out and batch.get("label") is not None:
            probs = _probabilities(out["logits"].detach().float().cpu())  # [B, K]
            labels = plain(batch["label"]).view(-1).cpu()
            self._probs.append(probs.numpy())
            self._labels.append(labels.numpy())
            if self.detailed:
                values["label"] = labels.float()
                values["pred"] = probs.argmax(1).float()
                values["prob"] = probs[:, 1] if probs.shape[1] == 2 else probs.max(1).values
        if self.detailed:
            if batch.get("attrs") is not None:
                raw = plain(batch["attrs"]).float().cpu()
                for i, name in enumerate(self.attributes.names):
                    values[name] = raw[:, i]
            for name, dim in zip(self.attributes.regularized, self.attributes.dims):
                values[f"z_{name}"] = mu[:, dim]
        return values

    def epoch_start(self, stage: str) -> None:
        if stage == "val":
            self._reset()

    def epoch_end(self, stage: str) -> dict[str, float]:
        if stage != "val" or not self._mu:
            return {}
        figures: dict[str, float] = {}
        if self._probs:
            probs, labels = np.concatenate(self._probs), np.concatenate(self._labels)
            figures["accuracy"] = float((probs.argmax(1) == labels).mean())
            figures["auc"] = _auc(labels, probs)
        report: dict[str, Any] = {}
        if self._attrs:
            report = disentanglement_report(np.concatenate(self._mu), np.concatenate(self._attrs), self.attributes.names)
            figures.update({k: report[k] for k in METRIC_KEYS})
        self.report = {**figures, "per_attribute": report.get("per_attribute", {}), "n": int(sum(len(m) for m in self._mu))}
        self._reset()
        return figures

    def preview(self, model: nn.Module, batch: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        x = plain(batch["image"]).float()[:1]
        recon = model(x, sample=False)["recon"]
        return [("input", x[0]), ("reconstruction", recon[0])]


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` logits -> ``[B, max(K, 2)]`` class probabilities (one logit = binary)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _predict(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC over the split (one-vs-rest for several classes); NaN when a class is absent."""
    if len(np.unique(labels)) < probs.shape[1]:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr"))
