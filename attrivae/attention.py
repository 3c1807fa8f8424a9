"""Class-activation maps of the encoder for one latent attribute or the classifier, computed with captum.

Two methods, both gradient x activation at an encoder layer, ReLU, upsampled to the input:

- ``hirescam`` (default; Draelos and Carin 2020): the element-wise product of the layer's
  activations and the gradient of the target, summed over channels (captum
  ``LayerGradientXActivation``). For a network that flattens its last feature map into fully
  connected layers, as the Attri-VAE's encoder does, this is the map that is faithful to the
  model: summed over voxels it is the first-order contribution of the layer to the target.
- ``gradcam`` (Selvaraju et al. 2017; captum ``LayerGradCam``): each channel weighted by its
  gradient averaged over the whole map. The averaging is exact for networks that end in global
  average pooling; after a flatten + linear layer it mixes the evidence of every location into
  one weight per channel, and on the lesion phantoms the map then misses the lesion (measured
  in docs/attrivae.md).

The ReLU keeps the *positive* evidence: where the layer's activation raises the target. A target
read from a dark structure (a larger ventricle is more dark CSF, so less activation there) shows up
as *negative* evidence, which the ReLU drops; ``evidence="negative"`` maps that side instead
(measured on IXI in docs/benchmarks.md).
"""

from __future__ import annotations

import copy

import torch
from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation
from torch import nn

from medlatent.attrivae.model import AttriVAE
from medlatent.errors import InputError

__all__ = ["default_layer", "resolve_layer", "grad_cam", "randomized_copy", "MIN_VOXELS", "METHODS", "EVIDENCE"]

#: a Grad-CAM layer coarser than this per axis cannot localise anything useful
MIN_VOXELS = 4
METHODS = ("hirescam", "gradcam")
#: which side of the signed layer map becomes the [0, 1] attention map
EVIDENCE = ("positive", "negative")


def default_layer(model: AttriVAE) -> str:
    """The last encoder layer (forward order) with at least ``MIN_VOXELS`` voxels along every axis."""
    usable = [name for name, shape in model.layer_shapes().items() if min(shape) >= MIN_VOXELS]
    return usable[-1] if usable else "encoder.stem"


def resolve_layer(model: AttriVAE, name: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``name`` (default ``default_layer``); InputError listing the choices."""
    name = name or default_layer(model)
    shapes = model.layer_shapes()
    if name not in shapes:
        listed = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())
        raise InputError(f"--layer: unknown encoder layer '{name}'; available: {listed}")
    return name, model.get_submodule(name)


class _Explained(nn.Module):
    """The scalar per item that Grad-CAM explains: ``mu[:, k]`` or the classifier's logits."""

    def __init__(self, model: AttriVAE, dim: int | None) -> None:
        super().__init__()
        self.model, self.dim = model, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.model.encode(x)  # [B, L]
        if self.dim is not None:
            return mu[:, self.dim]  # [B]
        return self.model.classify(mu)  # [B, K]: the classifier reads mu at inference


def grad_cam(model: AttriVAE, x: torch.Tensor, layer: str | None = None, dim: int | None = None,
             evidence: str = "positive", method: str = "hirescam") -> torch.Tensor:
    """Attention map of ``mu[:, dim]`` (an attribute) or, with ``dim=None``, of the classifier logit.

    For a binary classifier the single logit is explained (evidence for the positive class);
    for several classes, each item's predicted class. The layer map (``method``, see the module
    docstring) is passed through ReLU (or, for negative evidence, its negation is), upsampled to
    the input with captum's ``LayerAttribution.interpolate`` (trilinear) and divided by its
    maximum, so each map lies in [0, 1] (all zeros where there is no evidence of that sign).

    Args:
        model: a trained ``AttriVAE`` (set to eval mode here).
        x: ``[B, 1, D, H, W]`` preprocessed volumes.
        layer: encoder layer name (``AttriVAE.layer_shapes``); default ``default_layer``.
        dim: latent dimension to explain, or None for the classifier.
        evidence: ``positive`` (Grad-CAM's ReLU: where the activation raises the target),
            ``negative`` (where it lowers the target), or ``signed``: the map divided by its
            largest magnitude, in [-1, 1] (for comparing maps, e.g. the randomisation check).
        method: ``hirescam`` (default) or ``gradcam``.

    Returns:
        ``[B, 1, D, H, W]`` float32 in [0, 1] (``signed``: [-1, 1]), on ``x``'s device, detached.
    """
    if method not in METHODS:
        raise InputError(f"attention method must be one of {', '.join(METHODS)}, got {method!r}")
    if evidence not in (*EVIDENCE, "signed"):
        raise InputError(f"attention evidence must be one of {', '.join(EVIDENCE)} or signed, got {evidence!r}")
    model.eval()
    _, module = resolve_layer(model, layer)
    explained = _Explained(model, dim)
    target = None
    if dim is None:
        with torch.no_grad():
            logits = explained(x)
        target = 0 if logits.shape[1] == 1 else logits.argmax(1).tolist()
    with torch.enable_grad():
        if method == "gradcam":
            cam = LayerGradCam(explained, module).attribute(x, target=target)  # [B, 1, d, h, w]
        else:
            cam = LayerGradientXActivation(explained, module).attribute(x, target=target).sum(1, keepdim=True)
    if evidence == "negative":
        cam = -cam
    relu = evidence != "signed"
    if relu:
        cam = cam.clamp_min(0.0)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), interpolate_mode="trilinear")
    cam = torch.nan_to_num(cam.float(), nan=0.0)
    if relu:
        cam = cam.clamp_min(0.0)  # trilinear upsampling of a non-negative map stays non-negative; guard rounding
    peak = cam.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1, 1)
    return (cam / peak).clamp(0.0 if relu else -1.0, 1.0)


def randomized_copy(model: AttriVAE, seed: int = 0) -> AttriVAE:
    """A copy of ``model`` with every layer re-initialised (the model-randomisation sanity check of Adebayo et al. 2018)."""
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and module is not clone:
            module.reset_parameters()
    torch.random.set_rng_state(generator_state)
    return clone.eval()
