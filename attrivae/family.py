"""The Attri-VAE family: its config sections, how a run's network and task are built, and its hooks.

The command layer reaches the family only through :data:`FAMILY` (docs/architecture.md,
"The family contract"); the math lives in ``model``, ``losses``/``ar_loss``, ``disentanglement``,
``traversal`` and ``attention``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from scipy.stats import spearmanr
from torch import nn

from medlatent import distributed as dist_utils
from medlatent.attrivae.attention import METHODS
from medlatent.attrivae.attributes import AttributeMap, check_attributes_present, fit_attribute_map
from medlatent.attrivae.model import AttriVAE
from medlatent.attrivae.task import AttriVAETask
from medlatent.config import Section
from medlatent.errors import InputError
from medlatent.family import Family

__all__ = ["FAMILY", "NetSection", "LossSection", "build_model", "model_kwargs", "num_outputs"]

NORMS = ("none", "batch", "instance", "group")


class NetSection(Section):
    """``net`` of an Attri-VAE run."""

    space_to_depth: int = Field(1, ge=1)           # lossless fold of f^3 voxels into channels first (2: ~6x faster on CPU)
    channels: list[int] = Field([16, 32, 64, 64], min_length=1)  # one stride-2 level each: 64x64x48 -> 4x4x3
    decoder_final_channels: int | None = Field(None, ge=1)  # width of the decoder's last level (default channels[0])
    bottleneck_channels: int = Field(16, ge=1)     # conv channels before flattening to mu / logvar
    latent_dim: int = Field(64, ge=1)
    num_res_units: int = Field(1, ge=0)
    norm: Literal[NORMS] = "batch"  # type: ignore[valid-type]
    classifier_hidden: list[int] = [32, 16]        # paper: latent -> 32 -> 16 -> classes
    output: Literal["sigmoid", "linear"] = "sigmoid"  # sigmoid: volumes scaled to [0, 1] by data.intensity: percentile
    # the untrained decoder's output level (the last conv's bias): the training volumes' mean intensity where
    # most of a volume is background (configs/attrivae_demo.yaml); None = PyTorch's default (0.5 for sigmoid)
    output_init: float | None = None
    # what the classifier reads in training: mu, as at inference, so that its batch-norm
    # statistics match; z (the paper) leaves them fitted to noisier inputs (docs/attrivae.md)
    classifier_input: Literal["mu", "z"] = "mu"
    attention_layer: str | None = None             # None = attrivae.attention.default_layer (the stem)
    attention_method: Literal[METHODS] | None = None  # type: ignore[valid-type]  # None = attrivae.attention's default

    @field_validator("space_to_depth")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("channels", "classifier_hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("every width must be a positive integer")
        return value


class LossSection(Section):
    """``loss`` of an Attri-VAE run (Cetin et al.: recon + beta KL + gamma AR + alpha classification)."""

    beta: float = Field(2.0, ge=0)      # KL weight
    gamma: float = Field(200.0, ge=0)   # AR weight (0 = unregularised baseline)
    delta: float = Field(10.0, gt=0)    # AR tanh steepness
    alpha: float = Field(1.0, ge=0)     # classification weight
    regularized: list[str] | None = None  # attributes tied to latent dims 0, 1, ...; None = all of data.attributes


def check(cfg: dict[str, Any]) -> None:
    """Cross-section checks: the grid divides the input, the regularised attributes exist and fit the latent."""
    net, data = cfg["net"], cfg["data"]
    factor = int(net["space_to_depth"]) * 2 ** len(net["channels"])
    if any(int(s) % factor for s in data["spatial_size"]):
        raise InputError(f"config key 'data.spatial_size': {data['spatial_size']} must be divisible by "
                         f"net.space_to_depth * 2**len(net.channels) = {factor}")
    init = net["output_init"]
    if init is not None and net["output"] == "sigmoid" and not 0.0 < float(init) < 1.0:
        raise InputError(f"config key 'net.output_init': {init} must lie strictly between 0 and 1 for a sigmoid output")
    regularized = cfg["loss"]["regularized"]
    names = list(data["attributes"])
    if regularized is not None:
        unknown = [n for n in regularized if n not in names]
        if unknown:
            raise InputError(f"config key 'loss.regularized': {unknown} not among data.attributes {names}")
    count = len(names if regularized is None else regularized)
    if count > int(net["latent_dim"]):
        raise InputError(f"config key 'net.latent_dim': {net['latent_dim']} is fewer than the {count} "
                         "regularized attributes")


def num_outputs(attributes: AttributeMap) -> int:
    """Classifier logits for the run's classes: 0 without a label, 1 for two classes, else one per class."""
    classes = attributes.classes
    if not classes:
        return 0
    if len(classes) < 2:
        raise InputError(f"config key 'data.label': '{attributes.label}' has a single class {classes}; "
                         "a classifier needs at least two")
    return 1 if len(classes) == 2 else len(classes)


def model_kwargs(cfg: Mapping[str, Any], attributes: AttributeMap) -> dict[str, Any]:
    """The ``AttriVAE`` keyword arguments the validated ``net`` section describes for ``data.spatial_size`` volumes."""
    net = cfg["net"]
    return dict(spatial_size=[int(s) for s in cfg["data"]["spatial_size"]], channels=list(net["channels"]),
                latent_dim=int(net["latent_dim"]), bottleneck_channels=int(net["bottleneck_channels"]),
                num_res_units=int(net["num_res_units"]), norm=net["norm"], num_outputs=num_outputs(attributes),
                classifier_hidden=list(net["classifier_hidden"]), output=net["output"],
                classifier_input=net["classifier_input"], space_to_depth=int(net["space_to_depth"]),
                decoder_final_channels=net["decoder_final_channels"], output_init=net["output_init"])


def build_model(cfg: Mapping[str, Any], attributes: AttributeMap) -> AttriVAE:
    """The network the validated ``net`` section describes for ``data.spatial_size`` volumes."""
    return AttriVAE(**model_kwargs(cfg, attributes))


def build_task(cfg: dict[str, Any], info: Any, run_dir: Path, records: Mapping[str, Sequence[Mapping]]) -> AttriVAETask:
    """Fit the attribute scaler on the training split, save it with the attribute -> dim map, build the task.

    Args:
        cfg: validated config.
        info: the data layer's ``DataInfo`` (``classes``, ``attributes``, ``label``).
        run_dir: the run; ``attributes.json`` is written there by rank 0.
        records: split -> records, each with ``"attrs"`` raw values in ``info.attributes`` order.
    """
    loss = cfg["loss"]
    amap = fit_attribute_map(records, info.attributes, loss["regularized"], int(cfg["net"]["latent_dim"]),
                             label=info.label, classes=info.classes, gamma=float(loss["gamma"]))
    check_attributes_present(records, amap.names, amap.columns)
    if dist_utils.is_main():
        amap.save(run_dir)
    return AttriVAETask(build_model(cfg, amap), amap, loss)


def build_network(run_dir: Path, cfg: dict[str, Any]) -> AttriVAE:
    """The run's network, sized by the classes and attributes saved in ``RUN/attributes.json``."""
    return build_model(cfg, AttributeMap.load(run_dir))


@torch.no_grad()
def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, D, H, W]`` -> the decoded latent mean, same shape."""
    mu, _ = model.encode(x)
    return model.decode(mu)


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``mu_0 .. mu_{L-1}`` (the encoder mean; the regularised attributes sit on the dims of
    ``RUN/attributes.json``); arrays: ``mu`` itself as float32 ``[L]``."""
    mu = model.encode(x)[0][0].float().cpu().numpy()
    return {f"mu_{k}": float(v) for k, v in enumerate(mu)}, {"": mu.astype(np.float32)}


def evaluation_task(run_dir: Path, cfg: dict[str, Any], model: nn.Module, records: Sequence[Mapping]) -> AttriVAETask:
    """A task that keeps every figure of each volume (``detailed``), after checking the split has its attributes."""
    amap = AttributeMap.load(run_dir)
    check_attributes_present({"split": records}, amap.names, amap.columns)
    return AttriVAETask(model, amap, cfg["loss"], detailed=True)


def summarize(task: AttriVAETask, means: dict[str, float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reconstruction, classification and disentanglement figures of a split.

    Keys: ``mse``, ``ssim``, ... (means over volumes), ``accuracy``, ``auc`` (from the predicted
    probabilities over the whole split), ``interpretability``, ``mig``, ``sap``, ``scc``,
    ``modularity`` (AR-VAE definitions on ``mu``), ``per_attribute: {name: {...}}``,
    ``regularized: {name: dim}`` and ``tied_spearman: {name: rho}`` (each regularised attribute
    against its own latent dim: the per-attribute figures use the dim the MI picks, which on a few
    dozen subjects may not be the tied one).
    """
    nan = float("nan")
    metrics: dict[str, Any] = {k: means.get(k, nan) for k in ("mse", "ssim", "psnr", "mae", "loss", "recon", "kl",
                                                              "ar", "cls")}
    metrics.update({k: task.report.get(k, nan) for k in ("accuracy", "auc", "interpretability", "mig", "sap", "scc",
                                                          "modularity")})
    amap = task.attributes
    metrics["per_attribute"] = task.report.get("per_attribute", {})
    metrics["regularized"] = dict(zip(amap.regularized, amap.dims))
    table = pd.DataFrame(rows)
    metrics["tied_spearman"] = {
        name: float(spearmanr(table[name], table[f"z_{name}"])[0]) if len(table) > 2 else nan
        for name in amap.regularized}
    return metrics


FAMILY = Family(
    name="attrivae",
    sections={"net": NetSection, "loss": LossSection},
    # the objective itself: every term is comparable across epochs, unlike the split-level metrics
    overrides={"train": {"best_metric": "val_loss", "best_mode": "min"}},
    check=check,
    build_task=build_task,
    build_network=build_network,
    reconstruct=reconstruct,
    features=features,
    evaluation_task=evaluation_task,
    summarize=summarize,
    commands=("evaluate", "reconstruct", "encode", "traverse", "interpolate", "attention", "report", "export"),
)
