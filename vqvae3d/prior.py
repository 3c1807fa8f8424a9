"""Autoregressive priors over a VQ-VAE's code grids: the model, its config section, data, task and sampling.

A two-level VQ-VAE gets one prior per level: the top grid's prior, and the bottom grid's prior
conditioned on the top grid; training minimises the summed cross-entropy of both. Run folders,
the code cache and the ``train-prior`` / ``sample`` commands are in ``medlatent.commands.prior``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset

from medlatent.config import Section
from medlatent.engine import Task
from medlatent.vqvae3d.prior_pixelcnn import PixelCNN3d
from medlatent.vqvae3d.prior_transformer import ORDERINGS, TransformerPrior

__all__ = ["PRIORS", "PRIOR_SECTIONS", "PRIOR_TRAIN_DEFAULTS", "PriorSection", "CodePrior", "CodeGridDataset",
           "PriorTask", "build_prior", "sample_codes", "decode_codes"]

PRIORS = ("pixelcnn", "transformer")
LOG2E = 1.0 / math.log(2.0)


# --- config ---------------------------------------------------------------------------------------

class PixelCNNSection(Section):
    channels: int = Field(32, ge=1)
    layers: int = Field(8, ge=1)
    kernel: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _odd_kernel(self) -> "PixelCNNSection":
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        return self


class TransformerSection(Section):
    dim: int = Field(128, ge=1)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    ordering: Literal[ORDERINGS] = "raster_scan"  # type: ignore[valid-type]
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("heads")
    @classmethod
    def _heads_divide_dim(cls, heads: int, info: ValidationInfo) -> int:
        dim = info.data.get("dim")
        if dim is not None and dim % heads:
            raise ValueError(f"must divide prior.transformer.dim ({dim})")
        return heads


class PriorEvalSection(Section):
    """``prior.eval``: how ``evaluate --prior`` samples and tests."""

    num_samples: int = Field(16, ge=2)
    seed: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    permutations: int = Field(1000, ge=1)
    max_pairs: int = Field(300, ge=1)


class PriorSection(Section):
    """``prior``: which autoregressive model, its size, and how the code grids are encoded and sampled."""

    type: Literal[PRIORS] = "transformer"  # type: ignore[valid-type]
    conditional: bool = True          # condition on the run's data.label when it has one
    pixelcnn: PixelCNNSection = PixelCNNSection()
    transformer: TransformerSection = TransformerSection()
    # also train on the code grids of the training volumes mirrored left-right (RAS axis 0), encoded
    # by the VQ-VAE: twice the grids, for a prior that overfits a small training split
    mirror: bool = False
    encode_batch_size: int = Field(4, ge=1)   # volumes per batch when encoding the splits
    sample_batch_size: int = Field(8, ge=1)   # grids drawn together by `sample` and `evaluate --prior`
    eval: PriorEvalSection = PriorEvalSection()


#: a prior run's own sections (its ``train`` is the engine's, with the defaults below)
PRIOR_SECTIONS = {"prior": PriorSection}
PRIOR_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 8, "lr": 1.0e-3, "best_metric": "val_bits_per_code",
                                        "best_mode": "min", "preview": False, "grad_clip": 1.0}


# --- the model: one prior per level -------------------------------------------------------------

class CodePrior(nn.Module):
    """Autoregressive priors for the code grids of one VQ-VAE, top level first.

    Level ``i > 0`` is conditioned on the grid of level ``i - 1`` (VQ-VAE-2: bottom given top).
    Every level is conditioned on the label when ``num_classes > 0``.
    """

    def __init__(self, levels: list[nn.Module]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def nll(self, codes: list[torch.Tensor], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats, summed over each grid: ``[B, levels]``."""
        out = []
        for i, (prior, grid) in enumerate(zip(self.levels, codes)):
            logits = prior(grid, labels, codes[i - 1] if i else None)  # [B, K, d, h, w]
            out.append(F.cross_entropy(logits.float(), grid, reduction="none").flatten(1).sum(1))  # [B]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``n`` grids per level (top first), each ``[n, d, h, w]``."""
        codes: list[torch.Tensor] = []
        for prior in self.levels:
            codes.append(prior.sample(n, labels, codes[-1] if codes else None, temperature=temperature,
                                      top_k=top_k, generator=generator))
        return codes


def build_prior(prior_cfg: dict[str, Any], info: dict[str, Any]) -> CodePrior:
    """A :class:`CodePrior` from the ``prior`` config section and ``prior_info.json``'s contents.

    ``info``: ``{"levels": [{"shape": [d, h, w], "num_codes": K}, ...] (top first), "classes": [...] | None}``.
    """
    kind = prior_cfg["type"]
    num_classes = len(info["classes"]) if info.get("classes") and prior_cfg["conditional"] else 0
    levels: list[nn.Module] = []
    previous: dict[str, Any] | None = None
    for level in info["levels"]:
        shape, codes = tuple(level["shape"]), int(level["num_codes"])
        context = int(previous["num_codes"]) if previous else None
        if kind == "pixelcnn":
            p = prior_cfg["pixelcnn"]
            levels.append(PixelCNN3d(codes, shape, channels=p["channels"], layers=p["layers"], kernel=p["kernel"],
                                     num_classes=num_classes, context_codes=context))
        else:
            t = prior_cfg["transformer"]
            levels.append(TransformerPrior(codes, shape, dim=t["dim"], depth=t["depth"], heads=t["heads"],
                                           ordering=t["ordering"], num_classes=num_classes, context_codes=context,
                                           dropout=t["dropout"]))
        previous = level
    return CodePrior(levels)


# --- data and task ------------------------------------------------------------------------------

class CodeGridDataset(Dataset):
    """Items ``{"codes0": LongTensor [d, h, w], ("codes1": ...), "label"?: LongTensor [], "subject": str}``.

    Args:
        split: ``{"codes": [LongTensor [N, d, h, w] per level], "labels": LongTensor [N] | None,
            "subjects": [str] * N}`` as stored in the codes cache.
    """

    def __init__(self, split: dict[str, Any]) -> None:
        self.codes, self.labels, self.subjects = split["codes"], split.get("labels"), split["subjects"]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {f"codes{level}": grid[i] for level, grid in enumerate(self.codes)}
        if self.labels is not None:
            item["label"] = self.labels[i]
        item["subject"] = self.subjects[i]
        return item


def _batch_codes(batch: dict[str, Any], levels: int) -> list[torch.Tensor]:
    return [batch[f"codes{i}"].long() for i in range(levels)]


class PriorTask(Task):
    """The engine's view of prior training: cross-entropy over code indices, reported in bits per code."""

    curve_metrics = ("loss", "bits_per_code")

    def __init__(self, model: CodePrior, conditional: bool) -> None:
        self.model = model
        self.conditional = conditional
        self.levels = len(model.levels)
        self.codes_per_level = [math.prod(p.shape) for p in model.levels]

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch["label"].long() if self.conditional else None

    def _nll(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # the engine may hand a DDP wrapper: reach the CodePrior underneath
        inner = model.module if hasattr(model, "module") else model
        return inner.nll(_batch_codes(batch, self.levels), self._labels(batch))  # [B, levels] nats

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        nats_per_code = self._nll(model, batch).sum(1) / sum(self.codes_per_level)  # [B]
        loss = nats_per_code.mean()
        return loss, {"loss": loss.item(), "bits_per_code": loss.item() * LOG2E}

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        nll = self._nll(model, batch)  # [B, levels]
        total = nll.sum(1) / sum(self.codes_per_level)
        values = {"loss": total, "bits_per_code": total * LOG2E}
        if self.levels > 1:
            for i, name in enumerate(("top", "bottom")[: self.levels]):
                values[f"bits_per_code_{name}"] = nll[:, i] / self.codes_per_level[i] * LOG2E
        return values


# --- sampling -----------------------------------------------------------------------------------

@torch.no_grad()
def sample_codes(prior: CodePrior, n: int, labels: torch.Tensor | None, temperature: float, top_k: int | None,
                 generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
    """``n`` code grids per level (top first), drawn ``batch_size`` at a time: ``[n, d, h, w]`` each."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        part = labels[start:start + size] if labels is not None else None
        chunks.append(prior.sample(size, part, temperature=temperature, top_k=top_k, generator=generator))
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@torch.no_grad()
def decode_codes(vqvae: nn.Module, codes: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Code grids (top first, ``[n, d, h, w]`` each) -> volumes ``[n, 1, D, H, W]``, ``batch_size`` at a time."""
    out = []
    for start in range(0, codes[0].shape[0], batch_size):
        out.append(vqvae.decode_indices([c[start:start + batch_size] for c in codes]).float().cpu())
    return torch.cat(out)
