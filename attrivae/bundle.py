"""The Attri-VAE as the network of an exported MONAI bundle, and the writer of its per-scan latent record.

A bundle's ``network_def`` must map an image batch to one tensor (``monai.bundle``'s
``verify_net_in_out``, ``SupervisedEvaluator``), so :class:`AttriVAEBundleNet` stacks on
channels what has a value per voxel: the reconstruction and the attention maps
(:func:`medlatent.attrivae.attention.attention_map`, the maps of ``medlatent attention``). What has
one value per scan, the latent mean and the class probabilities, is written by
:class:`SaveLatentd` as a JSON file beside the volumes. Parameters are the run's: the bundle's
``models/model.pt`` is the run's state dict unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from monai.data.utils import create_file_basename
from monai.networks import eval_mode
from monai.transforms import MapTransform

from medlatent.attrivae.attention import MapSettings, attention_map
from medlatent.attrivae.model import AttriVAE
from medlatent.io import write_text_atomic

__all__ = ["AttriVAEBundleNet", "AttriVAETraceable", "SaveLatentd", "class_probabilities"]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` logits -> ``[B, classes]`` probabilities: one logit is a binary classifier (``[1 - p, p]``)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class AttriVAEBundleNet(AttriVAE):
    """``AttriVAE`` (same arguments and parameters, plus the attention settings) whose forward returns the bundle's maps.

    ``x [B, 1, D, H, W] -> [B, 1 + len(targets), D, H, W]`` float32: channel 0 the reconstruction
    of the latent mean (as ``medlatent reconstruct``), then one attention map in [0, 1] per target
    (``None``: the classifier; an int: that latent dimension), as ``medlatent attention`` computes
    it with the same ``layer``, ``method`` and ``evidence``. The maps need gradients, so they are
    computed with autograd enabled even when the caller runs under ``torch.no_grad``.

    Args:
        targets: what each map explains, in channel order.
        attention_layer: encoder layer of the maps (``AttriVAE.layer_shapes``).
        attention_method, attention_evidence: see ``attrivae.attention.MapSettings``.
        **kwargs: the ``AttriVAE`` arguments of the run.
    """

    def __init__(self, targets: Sequence[int | None] = (), attention_layer: str | None = None,
                 attention_method: str = "hirescam", attention_evidence: str = "positive", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.targets = list(targets)
        self.attention_layer, self.attention_method = attention_layer, attention_method
        self.attention_evidence = attention_evidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            reconstruction = self.decode(self.encode(x)[0])
        settings = MapSettings(method=self.attention_method, layer=self.attention_layer, evidence=self.attention_evidence)
        maps = [attention_map(self, x, dim, settings) for dim in self.targets]
        return torch.cat([reconstruction.float(), *maps], dim=1)


class SaveLatentd(MapTransform):
    """Write one scan's latent mean and class probabilities as ``OUTPUT_DIR/<scan name>_latent.json``.

    The file is named as ``SaveImaged(separate_folder=False)`` names the scan's volumes. Keys:
    ``image`` (the source file), ``latent_mean`` (``[latent_dim]``), ``regularized``
    (attribute -> its latent dimension), and with a classifier ``classes`` and ``probability``
    (one per class, in ``classes`` order).

    Args:
        keys: the preprocessed image key (``[1, D, H, W]`` MetaTensor with ``filename_or_obj``).
        network: the bundle's ``AttriVAE`` (its weights loaded).
        output_dir: folder of the file.
        regularized: attribute name -> latent dimension, from the run.
        classes: class names of the classifier, or None.
    """

    def __init__(self, keys: str | Sequence[str], network: AttriVAE, output_dir: str,
                 regularized: Mapping[str, int] | None = None, classes: Sequence[str] | None = None) -> None:
        super().__init__(keys)
        self.network, self.output_dir = network, str(output_dir)
        self.regularized, self.classes = dict(regularized or {}), list(classes) if classes else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            source = str(image.meta.get("filename_or_obj", "scan"))
            x = image.as_tensor()[None].float().to(next(self.network.parameters()).device)
            # eval_mode: an evaluator hands the network back in its previous (training) mode before postprocessing
            with eval_mode(self.network):
                mu = self.network.encode(x)[0]
                record: dict[str, Any] = {"image": source, "latent_mean": mu[0].cpu().tolist(),
                                          "regularized": self.regularized}
                if self.network.classifier is not None:
                    record["classes"] = self.classes
                    record["probability"] = class_probabilities(self.network.classify(mu))[0].cpu().tolist()
            stem = create_file_basename("latent", source, self.output_dir, separate_folder=False)
            Path(self.output_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomic(f"{stem}.json", json.dumps(record, indent=1) + "\n")
        return d


class AttriVAETraceable(nn.Module):
    """The scriptable part of an ``AttriVAE``, for ``models/model.ts`` (``torch.jit.trace_module``).

    ``forward(x [B, 1, D, H, W]) -> reconstruction [B, 1, D, H, W]`` (decoded latent mean),
    ``encode(x) -> (mu, logvar)`` ``[B, L]`` each, ``classify(mu [B, L]) -> logits [B, K]``.
    The attention maps are left out: captum computes them with autograd hooks on an encoder
    layer, which a trace does not record.
    """

    def __init__(self, model: AttriVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.encode(x)[0])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)

    def classify(self, mu: torch.Tensor) -> torch.Tensor:
        return self.model.classify(mu)
