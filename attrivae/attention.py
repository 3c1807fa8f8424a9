"""Attention maps of the Attri-VAE encoder for one latent attribute or the classifier, computed with captum.

The explained scalar is the tied latent mean ``mu[:, k]`` of an attribute, or the classifier
logit (the positive class of a binary label, the predicted class otherwise). Five methods, all
captum's:

- ``hirescam`` (Draelos and Carin 2020; ``LayerGradientXActivation`` summed over channels): the
  element-wise product of a layer's activations and the target's gradient. After the encoder's
  flatten + linear head, summed over voxels it is the layer's first-order contribution to the target.
- ``gradcam`` (Selvaraju et al. 2017; ``LayerGradCam``): each channel weighted by its gradient
  averaged over the layer grid (exact only for networks ending in global average pooling).
- ``guided_gradcam`` (``GuidedGradCam``): Grad-CAM times guided backpropagation, on the input grid.
- ``integrated_gradients`` (Sundararajan et al. 2017; ``IntegratedGradients``): gradients
  integrated from a baseline (``zeros``, the ``blurred`` scan, or the scan with the body
  ``masked`` out to its mean intensity) to the scan, times the difference; on the input grid.
- ``occlusion`` (Zeiler and Fergus 2014; ``Occlusion``): the target's drop when a cube of
  ``patch_mm`` (converted to voxels with the input's spacing) is replaced by the baseline.

**Evidence** (the sign). Every method gives a signed map: positive where the input raises the
target. ``positive`` keeps that side, ``negative`` the side that lowers it (computed as the
positive evidence for the negated target, which for guided backpropagation is not the same as
flipping the sign afterwards), ``absolute`` both. A larger lateral ventricle is more dark CSF, so
its volume is read from *less* signal there: negative evidence (docs/attention.md).

Layer maps are upsampled to the input grid with captum's ``LayerAttribution.interpolate``
(trilinear ``torch.nn.functional.interpolate``) after the sign is applied, then divided by
their maximum, so a map lies in [0, 1] (``signed``, for comparing maps: in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from captum.attr import (GuidedGradCam, IntegratedGradients, LayerAttribution, LayerGradCam, LayerGradientXActivation,
                         Occlusion)
from monai.networks.layers import GaussianFilter
from torch import nn

from medlatent.attrivae.model import AttriVAE
from medlatent.errors import InputError

__all__ = ["MapSettings", "attention_map", "attention_maps", "blurred", "baseline_volume", "default_layer", "default_settings",
           "map_cell", "occlusion_window", "resolve_layer", "target_score", "with_defaults", "MIN_VOXELS", "METHODS", "LAYER_METHODS", "EVIDENCE", "BASELINES",
           "METHOD_NAMES", "INPUT_LAYER"]

#: a layer coarser than this per axis cannot localise anything useful
MIN_VOXELS = 4
METHODS = ("hirescam", "gradcam", "guided_gradcam", "integrated_gradients", "occlusion")
#: methods that read an encoder layer (the others attribute to the input voxels)
LAYER_METHODS = ("hirescam", "gradcam", "guided_gradcam")
#: which side of the signed map becomes the [0, 1] attention map
EVIDENCE = ("positive", "negative", "absolute")
#: reference volume of integrated gradients and occlusion (and what deletion curves replace voxels by)
BASELINES = ("zeros", "blurred", "masked")
METHOD_NAMES = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM",
                "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion"}
#: the ``layer`` of a method that attributes to the input voxels
INPUT_LAYER = "input"
#: Gaussian sigma of the ``blurred`` baseline, in voxels of the model input
BLUR_SIGMA_VOXELS = 3.0


@dataclass(frozen=True)
class MapSettings:
    """How one attention map is computed; every value is checked here, once.

    Args:
        method: one of ``METHODS``.
        layer: encoder layer name for ``LAYER_METHODS`` (None: ``default_layer``); ignored otherwise.
        evidence: one of ``EVIDENCE``, or ``signed`` (library only: the map in [-1, 1]).
        baseline: one of ``BASELINES`` (integrated gradients and occlusion).
        patch_mm: occlusion cube edge in mm (stride: half of it).
        steps: integration steps of integrated gradients.
    """

    method: str = "hirescam"
    layer: str | None = None
    evidence: str = "positive"
    baseline: str = "blurred"
    patch_mm: float = 16.0
    steps: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.evidence not in (*EVIDENCE, "signed"):
            raise InputError(f"--evidence: must be one of {', '.join(EVIDENCE)}, got {self.evidence!r}")
        if self.baseline not in BASELINES:
            raise InputError(f"--baseline: must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if not self.patch_mm > 0:
            raise InputError(f"--patch-mm: must be > 0, got {self.patch_mm}")
        if self.steps < 2:
            raise InputError(f"integrated gradients steps must be >= 2, got {self.steps}")

    @property
    def uses_layer(self) -> bool:
        return self.method in LAYER_METHODS

    def describe(self, layer: str | None = None) -> str:
        """E.g. ``HiResCAM at encoder.levels.1, negative evidence`` (``layer``: the resolved name)."""
        where = f" at {layer or self.layer or 'the default layer'}" if self.uses_layer else ""
        if self.method in ("integrated_gradients", "occlusion"):
            where = f" ({self.baseline} baseline" + (f", {self.patch_mm:g} mm patch)" if self.method == "occlusion" else ")")
        return f"{METHOD_NAMES[self.method]}{where}, {self.evidence} evidence"


def default_settings(target: str) -> tuple[MapSettings, ...]:
    """The maps exported by default for ``target`` = ``class`` or ``attribute`` (chosen in docs/attention.md).

    The class gets one map; an attribute two, positive and negative evidence, because a volume can
    be read from bright tissue (the phantom cavity) or from dark (CSF in the lateral ventricles).
    """
    if target == "class":
        return (MapSettings(),)
    if target == "attribute":
        return (MapSettings(), MapSettings(evidence="negative"))
    raise ValueError(f"target must be 'class' or 'attribute', got {target!r}")


def default_layer(model: AttriVAE) -> str:
    """The encoder's first layer (``encoder.stem``, the finest grid), unless it is coarser than
    ``MIN_VOXELS`` per axis: then the last layer that is not (chosen in docs/attention.md)."""
    shapes = model.layer_shapes()
    if min(shapes["encoder.stem"]) >= MIN_VOXELS:
        return "encoder.stem"
    usable = [name for name, shape in shapes.items() if min(shape) >= MIN_VOXELS]
    return usable[-1] if usable else "encoder.stem"


def resolve_layer(model: AttriVAE, name: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``name`` (default ``default_layer``); InputError listing the choices."""
    name = name or default_layer(model)
    shapes = model.layer_shapes()
    if name not in shapes:
        listed = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())
        raise InputError(f"--layer: unknown encoder layer '{name}'; available: {listed}")
    return name, model.get_submodule(name)


def occlusion_window(settings: MapSettings, shape: Sequence[int],
                     spacing: Sequence[float] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(patch, stride)`` in voxels of occlusion's cube of ``settings.patch_mm`` on a grid of ``shape``
    ``(D, H, W)`` and ``spacing`` mm (default 1 mm): the patch clipped to the grid, the stride half of it."""
    spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    patch = tuple(max(1, min(n, round(settings.patch_mm / s))) for n, s in zip(shape, spacing))
    return patch, tuple(max(1, p // 2) for p in patch)


def map_cell(model: AttriVAE, settings: MapSettings, spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
    """Input voxels per cell of the grid the map is computed on: ``(d, h, w)``.

    A layer's grid step; occlusion's stride (its map is constant over stride-sized blocks, so its
    peak is a block; ``spacing``: the input's voxel size in mm, as for the map); 1s for the other
    input methods.
    """
    if settings.method == "occlusion":
        return occlusion_window(settings, model.spatial_size, spacing)[1]
    if not settings.uses_layer:
        return (1, 1, 1)
    name, _ = resolve_layer(model, settings.layer)
    return tuple(max(1, s // g) for s, g in zip(model.spatial_size, model.layer_shapes()[name]))


def blurred(x: torch.Tensor, sigma: float = BLUR_SIGMA_VOXELS) -> torch.Tensor:
    """``[B, C, D, H, W]`` -> the same, Gaussian-blurred (MONAI ``GaussianFilter``, ``sigma`` in voxels)."""
    with torch.no_grad():
        return GaussianFilter(3, sigma).to(x.device)(x.float())


def baseline_volume(x: torch.Tensor, kind: str, body: torch.Tensor | None = None) -> torch.Tensor:
    """The reference volume ``[B, 1, D, H, W]`` of ``kind`` (``BASELINES``) for ``x`` of that shape.

    ``masked``: ``x`` with every voxel of the body (``body > 0``, default: voxels above 5% of each
    item's maximum) set to the body's mean intensity: anatomy removed, brightness kept.
    """
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "blurred":
        return blurred(x)
    if kind != "masked":
        raise InputError(f"--baseline: must be one of {', '.join(BASELINES)}, got {kind!r}")
    if body is None:
        body = x > 0.05 * x.flatten(1).amax(1).view(-1, 1, 1, 1, 1)
    body = body > 0
    mean = (x * body).flatten(1).sum(1) / body.flatten(1).sum(1).clamp_min(1)
    return torch.where(body, mean.view(-1, 1, 1, 1, 1), x)


class _Explained(nn.Module):
    """The scalar per item that is explained, times ``sign``: ``mu[:, k]`` or the classifier's logits."""

    def __init__(self, model: AttriVAE, dim: int | None, sign: float = 1.0) -> None:
        super().__init__()
        self.model, self.dim, self.sign = model, dim, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.model.encode(x)  # [B, L]
        if self.dim is not None:
            return self.sign * mu[:, self.dim]  # [B]
        return self.sign * self.model.classify(mu)  # [B, K]: the classifier reads mu at inference


def _class_target(model: AttriVAE, x: torch.Tensor, dim: int | None) -> int | list[int] | None:
    if dim is not None:
        return None
    with torch.no_grad():
        logits = _Explained(model, None)(x)
    return 0 if logits.shape[1] == 1 else logits.argmax(1).tolist()


def target_score(model: AttriVAE, x: torch.Tensor, dim: int | None = None,
                 evidence: str = "positive") -> Callable[[torch.Tensor], torch.Tensor]:
    """The explained scalar as a function ``[B, 1, D, H, W] -> [B]`` (for deletion curves).

    ``mu[:, dim]``, or the logit the class map of ``x`` (one item) explains; negated for
    ``negative`` evidence, so that "more of the evidence" always raises the score.
    """
    model.eval()
    explained = _Explained(model, dim, -1.0 if evidence == "negative" else 1.0)
    target = _class_target(model, x, dim)
    index = target[0] if isinstance(target, list) else target

    def score(volumes: torch.Tensor) -> torch.Tensor:
        out = explained(volumes)
        return out if index is None else out[:, index]

    return score


def _signed(model: AttriVAE, x: torch.Tensor, dim: int | None, settings: MapSettings, sign: float,
            spacing: Sequence[float] | None, body: torch.Tensor | None) -> torch.Tensor:
    """The raw attribution of ``sign * target``: ``[B, 1, d, h, w]`` on the layer grid or ``[B, 1, D, H, W]``."""
    explained = _Explained(model, dim, sign)
    target = _class_target(model, x, dim)
    method = settings.method
    with torch.enable_grad():
        if method in LAYER_METHODS:
            _, module = resolve_layer(model, settings.layer)
            if method == "hirescam":
                return LayerGradientXActivation(explained, module).attribute(x, target=target).sum(1, keepdim=True)
            if method == "gradcam":
                return LayerGradCam(explained, module).attribute(x, target=target, relu_attributions=False)
            return GuidedGradCam(explained, module).attribute(x, target=target, interpolate_mode="trilinear")
        base = baseline_volume(x, settings.baseline, body)
        if method == "integrated_gradients":
            return IntegratedGradients(explained).attribute(x, baselines=base, target=target, n_steps=settings.steps,
                                                            internal_batch_size=8)
        patch, stride = occlusion_window(settings, x.shape[2:], spacing)
        return Occlusion(explained).attribute(x, sliding_window_shapes=(1, *patch), strides=(1, *stride),
                                              baselines=base, target=target, perturbations_per_eval=8)


def attention_maps(model: AttriVAE, x: torch.Tensor, dim: int | None = None, settings: MapSettings = MapSettings(),
                   evidences: Sequence[str] = EVIDENCE, spacing: Sequence[float] | None = None,
                   body: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{evidence: map}`` for several evidences of one method, from one attribution where the method allows.

    Each map is exactly ``attention_map`` with ``settings.evidence`` replaced; the signed
    attribution is computed once and shared, except for ``guided_gradcam``, whose negative
    evidence needs its own pass with the negated target. Arguments and maps as in ``attention_map``.
    """
    model.eval()
    raws: dict[float, torch.Tensor] = {}
    maps = {}
    for evidence in evidences:
        MapSettings(evidence=evidence)  # checked
        sign = -1.0 if evidence == "negative" and settings.method == "guided_gradcam" else 1.0
        if sign not in raws:
            raws[sign] = _signed(model, x, dim, settings, sign, spacing, body).detach().float()
        cam = raws[sign]
        if evidence == "positive" or (evidence == "negative" and sign < 0):
            cam = cam.clamp_min(0.0)
        elif evidence == "negative":
            cam = (-cam).clamp_min(0.0)
        elif evidence == "absolute":
            cam = cam.abs()
        if cam.shape[2:] != x.shape[2:]:
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="trilinear")
        cam = torch.nan_to_num(cam, nan=0.0)
        peak = cam.abs().flatten(1).amax(1).view(-1, 1, 1, 1, 1)  # may be tiny (an untrained model): no floor
        scaled = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
        maps[evidence] = scaled.clamp(-1.0 if evidence == "signed" else 0.0, 1.0)
    return maps


def attention_map(model: AttriVAE, x: torch.Tensor, dim: int | None = None, settings: MapSettings = MapSettings(),
                  spacing: Sequence[float] | None = None, body: torch.Tensor | None = None) -> torch.Tensor:
    """Attention map of ``mu[:, dim]`` (an attribute) or, with ``dim=None``, of the classifier logit.

    Args:
        model: a trained ``AttriVAE`` (set to eval mode here).
        x: ``[B, 1, D, H, W]`` preprocessed volumes.
        dim: latent dimension to explain, or None for the classifier.
        settings: method, layer, evidence, baseline, occlusion patch (``MapSettings``).
        spacing: ``(D, H, W)`` voxel size of ``x`` in mm (occlusion's patch; default 1 mm).
        body: ``[B, 1, D, H, W]`` body mask (> 0) for the ``masked`` baseline.

    Returns:
        ``[B, 1, D, H, W]`` float32 in [0, 1] (``signed``: [-1, 1]; all zeros where there is no
        evidence of that sign), on ``x``'s device, detached.
    """
    return attention_maps(model, x, dim, settings, (settings.evidence,), spacing, body)[settings.evidence]


def with_defaults(settings: MapSettings, **values: object) -> MapSettings:
    """``settings`` with the given fields replaced and checked (``None`` values are left as they are)."""
    return replace(settings, **{k: v for k, v in values.items() if v is not None})
