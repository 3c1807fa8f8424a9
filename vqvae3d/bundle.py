"""The VQ-VAE as the network of an exported MONAI bundle: one forward that returns every per-voxel output.

A bundle's ``network_def`` must map an image batch to one tensor (``monai.bundle``'s
``verify_net_in_out``, ``SupervisedEvaluator``, TorchScript), so :class:`VQVAE3dBundleNet`
stacks on channels the reconstruction and each level's code indices, repeated nearest-neighbour
over the voxels each code covers. Its parameters are the run's: the bundle's ``models/model.pt``
is the run's state dict unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlatent.vqvae3d.features import level_names
from medlatent.vqvae3d.model import VQVAE3d

__all__ = ["VQVAE3dBundleNet"]


class VQVAE3dBundleNet(VQVAE3d):
    """``VQVAE3d`` (same arguments, same parameters) whose forward returns the bundle's outputs.

    ``x [B, 1, D, H, W] -> [B, 1 + levels, D, H, W]`` float32: channel 0 the reconstruction (the
    decoded quantized codes, as ``medlatent reconstruct``), channels 1.. the code index of each
    level (top first), each code repeated over the ``f^3`` voxels it covers (``f`` the level's
    downsampling), so the grid inverts to the input's geometry with the reconstruction.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        reconstruction, _, indices = super().forward(x)
        size = tuple(x.shape[2:])
        grids = [F.interpolate(idx[:, None].float(), size=size, mode="nearest") for idx in indices]
        return torch.cat([reconstruction.float(), *grids], dim=1)

    def channel_names(self) -> list[str]:
        """Names of the output channels: ``reconstruction``, then ``codes`` (flat) or ``codes_top``, ``codes_bottom``."""
        return ["reconstruction"] + (["codes"] if self.levels == 1 else [f"codes_{n}" for n in level_names(self)])
