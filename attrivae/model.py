"""The Attri-VAE network: shared 3D conv encoder -> (mu, logvar) -> z -> shared 3D conv decoder, plus an MLP classifier on z."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medlatent.blocks import Decoder3d, Encoder3d, depth_to_space, space_to_depth

__all__ = ["AttriVAE", "ClassifierHead", "encoder_layer_shapes"]


class ClassifierHead(nn.Module):
    """``latent -> hidden[0] -> hidden[1] -> outputs``, batch norm and ReLU between (Cetin et al. 2023).

    Args:
        latent_dim: size of ``z``.
        outputs: 1 logit for a binary label, else one logit per class.
        hidden: widths of the hidden layers (paper: 32, 16).
    """

    def __init__(self, latent_dim: int, outputs: int, hidden: Sequence[int] = (32, 16)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = latent_dim
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.BatchNorm1d(width), nn.ReLU()]
            previous = width
        layers.append(nn.Linear(previous, outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, latent_dim] -> [B, outputs]`` logits."""
        return self.layers(z)


def encoder_layer_shapes(spatial_size: Sequence[int], levels: int, space_to_depth: int = 1) -> dict[str, tuple[int, int, int]]:
    """Spatial output size of each Grad-CAM-able encoder layer, in forward order.

    Names are ``Encoder3d`` attribute paths under ``encoder.``: the stem keeps the size after
    space-to-depth (the input's divided by ``space_to_depth``), level ``i`` halves that
    ``i + 1`` times, the residual stack and head keep the last level's.
    """
    shapes: dict[str, tuple[int, int, int]] = {"encoder.stem": tuple(int(s) // space_to_depth for s in spatial_size)}
    for i in range(levels):
        shapes[f"encoder.levels.{i}"] = tuple(int(s) // (space_to_depth * 2 ** (i + 1)) for s in spatial_size)
    shapes["encoder.residual"] = shapes[f"encoder.levels.{levels - 1}"]
    shapes["encoder.head"] = shapes["encoder.residual"]
    return shapes


class AttriVAE(nn.Module):
    """Variational autoencoder for ``[B, 1, D, H, W]`` volumes with a classifier on the latent.

    Encoder: an optional lossless space-to-depth fold by ``f = space_to_depth`` per axis, then
    ``Encoder3d`` (one stride-2 level per entry of ``channels``) to
    ``[B, bottleneck, D/(f 2^L), H/(f 2^L), W/(f 2^L)]``, flattened, then one linear layer to ``mu`` and
    ``logvar`` (``sigma = exp(0.5 * logvar)``). Decoder: a linear layer back to the bottleneck
    grid, then ``Decoder3d`` and the inverse depth-to-space. The classifier reads ``mu`` (or, with
    ``classifier_input='z'``, the sampled ``z`` in training; ``mu`` in eval either way).

    Args:
        spatial_size: ``(D, H, W)`` of the input; each must be divisible by
            ``space_to_depth * 2 ** len(channels)``.
        channels: encoder widths per level (the decoder mirrors them).
        latent_dim: size of ``z`` (paper default 64).
        bottleneck_channels: channels of the conv grid before flattening.
        num_res_units: residual units at the bottom of encoder and decoder.
        norm: ``none | batch | instance | group`` inside the conv blocks.
        num_outputs: classifier logits (1 = binary); 0 for no classifier.
        classifier_hidden: hidden widths of the classifier.
        output: ``sigmoid`` (volumes scaled to [0, 1]) or ``linear``.
        classifier_input: ``mu`` (default: the mean, as at inference, so the classifier's
            batch-norm statistics match what it sees in eval) or ``z`` (the paper: the sampled
            code in training). At inference both read ``mu``.
        space_to_depth: fold each ``f^3`` block of voxels into channels before the encoder and
            unfold after the decoder (1 disables it). With 2, a 64x64x48 step costs a sixth of
            the time at the same parameter count on CPU (docs/architecture.md, "Space-to-depth").
        decoder_final_channels: width of the decoder's last level (default ``channels[0]``).
        output_init: the output the untrained decoder starts from, set through the last conv's
            bias (``logit(output_init)`` for sigmoid, ``output_init`` for linear); None keeps
            PyTorch's default, an output near 0.5 (sigmoid). Set it to the mean intensity of the
            training volumes when most of a volume is background: starting at 0.5 everywhere, the
            first steps push the whole volume down, turn every last-level channel into a
            background detector with a negative weight, and leave the decoder unable to output
            more than ``sigmoid(bias)`` ~ 0.5 anywhere (docs/attrivae.md, "Model and losses").
    """

    def __init__(self, spatial_size: Sequence[int], channels: Sequence[int] = (16, 32, 64, 64), latent_dim: int = 64,
                 bottleneck_channels: int = 16, num_res_units: int = 1, norm: str = "batch", num_outputs: int = 1,
                 classifier_hidden: Sequence[int] = (32, 16), output: str = "sigmoid",
                 classifier_input: str = "mu", space_to_depth: int = 1,
                 decoder_final_channels: int | None = None, output_init: float | None = None) -> None:
        super().__init__()
        channels = list(channels)
        if space_to_depth < 1 or space_to_depth & (space_to_depth - 1):
            raise ValueError(f"space_to_depth must be a power of two, got {space_to_depth}")
        self.s2d = int(space_to_depth)
        factor = self.s2d * 2 ** len(channels)
        if any(int(s) % factor for s in spatial_size):
            raise ValueError(f"spatial_size {list(spatial_size)} must be divisible by "
                             f"space_to_depth * 2**len(channels) = {factor}")
        if classifier_input not in ("z", "mu"):
            raise ValueError(f"classifier_input must be z or mu, got {classifier_input!r}")
        self.classifier_input = classifier_input
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be sigmoid or linear, got {output!r}")
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.latent_dim = int(latent_dim)
        self.grid = tuple(s // factor for s in self.spatial_size)
        self.bottleneck_channels = int(bottleneck_channels)
        flat = self.bottleneck_channels * self.grid[0] * self.grid[1] * self.grid[2]
        folded = self.s2d ** 3  # channels after space-to-depth
        self.encoder = Encoder3d(folded, channels, bottleneck_channels, num_res_units=num_res_units, norm=norm)
        self.to_moments = nn.Linear(flat, 2 * self.latent_dim)  # -> [mu | logvar]
        self.from_latent = nn.Linear(self.latent_dim, flat)
        self.decoder = Decoder3d(bottleneck_channels, channels[::-1], folded, num_res_units=num_res_units, norm=norm,
                                 final_channels=decoder_final_channels)
        self.output = output
        if output_init is not None:
            if output == "sigmoid" and not 0.0 < output_init < 1.0:
                raise ValueError(f"output_init must lie in (0, 1) for a sigmoid output, got {output_init}")
            with torch.no_grad():
                self.decoder.head[-1].bias.fill_(math.log(output_init / (1.0 - output_init)) if output == "sigmoid"
                                                 else output_init)
        self.classifier = ClassifierHead(self.latent_dim, num_outputs, classifier_hidden) if num_outputs else None
        self.levels = len(channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 1, D, H, W] -> (mu [B, L], logvar [B, L])``."""
        x = space_to_depth(x, self.s2d)
        h = self.encoder(x).flatten(1)  # [B, bottleneck * d * h * w]
        mu, logvar = self.to_moments(h).chunk(2, dim=1)
        # keep exp(logvar) finite early in training, when the flattened features are large
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + exp(0.5 * logvar) * eps`` with ``eps ~ N(0, I)``; ``[B, L]``."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B, 1, D, H, W]``."""
        h = self.from_latent(z).view(-1, self.bottleneck_channels, *self.grid)
        x = depth_to_space(self.decoder(h), self.s2d)  # [B, 1, D, H, W]
        return torch.sigmoid(x) if self.output == "sigmoid" else x

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B, outputs]`` logits; RuntimeError if the model was built without a classifier."""
        if self.classifier is None:
            raise RuntimeError("this model was trained without a label, so it has no classifier")
        return self.classifier(z)

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Everything a training or validation step needs in one call (so DDP sees one forward).

        Args:
            x: ``[B, 1, D, H, W]``.
            sample: draw ``z`` (default: in training mode) or use ``z = mu``.

        Returns:
            ``recon [B,1,D,H,W]``, ``mu``, ``logvar``, ``z`` ``[B, L]`` and, with a classifier,
            ``logits [B, outputs]``.
        """
        mu, logvar = self.encode(x)
        sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if sample else mu
        out = {"recon": self.decode(z), "mu": mu, "logvar": logvar, "z": z}
        if self.classifier is not None:
            out["logits"] = self.classifier(z if self.classifier_input == "z" else mu)
        return out

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Output size of each encoder layer usable for Grad-CAM (see ``encoder_layer_shapes``)."""
        return encoder_layer_shapes(self.spatial_size, self.levels, self.s2d)
