"""The VQ-VAE family: its config sections, how a run's network and task are built, and its hooks.

The command layer reaches the family only through :data:`FAMILY` (docs/architecture.md,
"The family contract"); the math lives in ``model``, ``quantizer``, ``task`` and ``features``,
the priors in ``prior``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from medlatent.config import Section
from medlatent.errors import InputError
from medlatent.family import Family
from medlatent.vqvae3d.features import level_names, volume_features
from medlatent.vqvae3d.model import VQVAE3d
from medlatent.vqvae3d.task import VQVAETask

__all__ = ["FAMILY", "NetSection", "LossSection", "build_model", "model_kwargs", "grid_factor"]

NORMS = ("none", "batch", "instance", "group")


class QuantizerSection(Section):
    """``net.quantizer``: the EMA codebook (see ``EMAQuantizer``)."""

    decay: float = Field(0.99, gt=0, lt=1)
    dead_threshold: float = Field(1.0, ge=0)
    kmeans_iters: int = Field(10, ge=0)
    eps: float = Field(1.0e-5, gt=0)


class NetSection(Section):
    """``net`` of a VQ-VAE run."""

    levels: Literal[1, 2] = 1              # 1: flat VQ-VAE; 2: VQ-VAE-2 top (1/2^(k+1)) + bottom (1/2^k) grids
    downsample_log2: int = Field(2, ge=1)  # k: the (bottom) code grid is 1/2^k of the input per axis
    space_to_depth: int = Field(2, ge=1)   # lossless reshape before the encoder (CPU speed; 1 disables)
    channels: list[int] = Field([64], min_length=1)  # encoder widths, one per stride-2 level (or one for all)
    decoder_channels: list[int] | None = None         # default: channels reversed
    decoder_final_channels: int | None = Field(None, ge=1)  # width of the decoder's last level
    num_res_units: int = Field(2, ge=0)
    res_channels: int | None = Field(None, ge=1)
    top_channels: int | None = Field(None, ge=1)       # two-level: width of the top encoder/decoder
    embedding_dim: int = Field(32, ge=1)
    num_codes: int | list[int] = 256                  # one int, or [top, bottom] for two levels
    norm: Literal[NORMS] = "none"  # type: ignore[valid-type]
    channels_last: bool = True
    quantizer: QuantizerSection = QuantizerSection()

    @field_validator("space_to_depth")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("channels", "decoder_channels", "num_codes")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        values = [value] if isinstance(value, int) else value or []
        if any(v < 1 for v in values):
            raise ValueError("every entry must be a positive integer")
        return value


class LossSection(Section):
    """``loss`` of a VQ-VAE run."""

    recon: Literal["mse", "l1"] = "mse"
    commitment: float = Field(0.25, ge=0)


def _strided_channels(net: Mapping[str, Any]) -> list[int]:
    """The encoder width of each stride-2 level; InputError naming the key when they do not fit."""
    s2d = int(net["space_to_depth"])
    strided = int(net["downsample_log2"]) - int(math.log2(s2d))
    if strided < 1:
        raise InputError(f"config key 'net.downsample_log2': {net['downsample_log2']} leaves no strided level "
                         f"after net.space_to_depth={s2d}; use a larger k or a smaller space_to_depth")
    channels = list(net["channels"])
    if len(channels) == 1:
        channels = channels * strided  # one width for every level
    if len(channels) != strided:
        raise InputError(f"config key 'net.channels': needs {strided} width(s) for downsample_log2="
                         f"{net['downsample_log2']} and space_to_depth={s2d}, got {net['channels']}")
    return channels


def grid_factor(net: Mapping[str, Any]) -> int:
    """How many input voxels per axis one code of the coarsest grid covers."""
    return 2 ** int(net["downsample_log2"]) * (2 if int(net["levels"]) == 2 else 1)


def check(cfg: dict[str, Any]) -> None:
    """Cross-section checks: the widths fit the levels, the codebooks the levels, the size the grid."""
    net = cfg["net"]
    _strided_channels(net)
    codes = net["num_codes"]
    if isinstance(codes, list) and len(codes) != int(net["levels"]):
        raise InputError(f"config key 'net.num_codes': needs one entry per level ({net['levels']}), got {codes}")
    size, factor = cfg["data"]["spatial_size"], grid_factor(net)
    if any(int(s) % factor for s in size):
        raise InputError(f"config key 'data.spatial_size': {size} must be divisible by {factor} "
                         f"(the model's downsampling: net.downsample_log2, net.levels)")


def model_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``VQVAE3d`` keyword arguments the validated ``net`` and ``loss`` sections describe (plain data)."""
    net, loss, q = cfg["net"], cfg["loss"], cfg["net"]["quantizer"]
    return dict(
        in_channels=1, channels=_strided_channels(net), embedding_dim=int(net["embedding_dim"]),
        num_codes=net["num_codes"], num_res_units=int(net["num_res_units"]), res_channels=net["res_channels"],
        decoder_channels=net["decoder_channels"], decoder_final_channels=net["decoder_final_channels"],
        space_to_depth=int(net["space_to_depth"]), levels=int(net["levels"]), top_channels=net["top_channels"],
        norm=net["norm"], decay=float(q["decay"]), commitment=float(loss["commitment"]),
        dead_threshold=float(q["dead_threshold"]), kmeans_iters=int(q["kmeans_iters"]), eps=float(q["eps"]),
        channels_last=bool(net["channels_last"]))


def build_model(cfg: Mapping[str, Any]) -> VQVAE3d:
    """The ``VQVAE3d`` the validated ``net`` and ``loss`` sections describe."""
    return VQVAE3d(**model_kwargs(cfg))


def data_range(cfg: Mapping[str, Any]) -> float | None:
    """Intensity range for PSNR/SSIM: 1 after percentile scaling to [0, 1], else each volume's own."""
    return 1.0 if cfg["data"]["intensity"] == "percentile" else None


def _task(cfg: Mapping[str, Any], model: VQVAE3d) -> VQVAETask:
    return VQVAETask(model, recon=cfg["loss"]["recon"], data_range=data_range(cfg))


def build_task(cfg: dict[str, Any], info: Any, run_dir: Path, records: Mapping[str, Sequence]) -> VQVAETask:
    """The training task of a VQ-VAE run (this family needs neither ``info`` nor ``records``)."""
    return _task(cfg, build_model(cfg))


def build_network(run_dir: Path, cfg: dict[str, Any]) -> VQVAE3d:
    return build_model(cfg)


@torch.no_grad()
def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, D, H, W]`` -> the decoded quantized codes, same shape."""
    return model(x)[0]


def features(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Pooled pre/post-quantization features and code usage; arrays: the code grid(s) as int16/int32."""
    columns, grids = volume_features(model, x)
    dtype = np.int16 if max(model.num_codes) < 2**15 else np.int32
    suffixes = [""] if model.levels == 1 else [f"_{name}" for name in level_names(model)]
    return columns, {suffix: grid.astype(dtype) for suffix, grid in zip(suffixes, grids)}


def evaluation_task(run_dir: Path, cfg: dict[str, Any], model: nn.Module, records: Sequence[Mapping]) -> VQVAETask:
    return _task(cfg, model)


SUMMARY_KEYS = ("ssim", "psnr", "mae", "mse", "perplexity", "codes_used_frac")


def summarize(task: Any, means: dict[str, float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reconstruction figures and codebook usage first, then every other per-volume mean."""
    metrics: dict[str, Any] = {k: means[k] for k in SUMMARY_KEYS if k in means}
    metrics.update({k: v for k, v in means.items() if k not in metrics})
    return metrics


FAMILY = Family(
    name="vqvae3d",
    sections={"net": NetSection, "loss": LossSection},
    overrides={"train": {"best_metric": "val_ssim", "best_mode": "max"}},
    check=check,
    build_task=build_task,
    build_network=build_network,
    reconstruct=reconstruct,
    features=features,
    evaluation_task=evaluation_task,
    summarize=summarize,
    commands=("evaluate", "evaluate --prior", "reconstruct", "encode", "train-prior", "sample", "export"),
)
