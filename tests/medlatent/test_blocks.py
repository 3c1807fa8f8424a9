"""Shared 3D blocks: space-to-depth round trip and the encoder/decoder shape contract."""

from __future__ import annotations

import torch

from medlatent.blocks import Decoder3d, Encoder3d, depth_to_space, space_to_depth


def test_space_to_depth_is_lossless_and_keeps_each_block_together() -> None:
    x = torch.randn(2, 1, 8, 12, 4)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 8, 4, 6, 2)
    assert torch.equal(depth_to_space(y, 2), x)
    # output voxel (0, 0, 0) holds exactly the input's first 2x2x2 block
    assert torch.equal(y[0, :, 0, 0, 0].sort().values, x[0, 0, :2, :2, :2].flatten().sort().values)


def test_encoder_and_decoder_mirror_each_other() -> None:
    encoder = Encoder3d(8, [16, 32], 4, num_res_units=1)
    decoder = Decoder3d(4, [32, 16], 8, num_res_units=1, final_channels=8)
    x = torch.randn(2, 8, 16, 16, 8)
    h = encoder(x)
    assert h.shape == (2, 4, 4, 4, 2)
    assert decoder(h).shape == x.shape
