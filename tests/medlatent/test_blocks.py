"""Shared 3D blocks: space-to-depth round trip and the encoder/decoder shape contract."""

from __future__ import annotations

import pytest
import torch

from medlatent.blocks import Decoder3d, Encoder3d, depth_to_space, space_to_depth


def test_space_to_depth_is_lossless_and_keeps_each_block_together() -> None:
    x = torch.randn(2, 1, 8, 12, 4)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 8, 4, 6, 2)
    assert torch.equal(depth_to_space(y, 2), x)
    # output voxel (0, 0, 0) holds exactly the input's first 2x2x2 block
    assert torch.equal(y[0, :, 0, 0, 0].sort().values, x[0, 0, :2, :2, :2].flatten().sort().values)


def _hand_written_space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    """The reshape blocks.py used before MONAI's pixelunshuffle: the channel order checkpoints were trained with."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // f, f, h // f, f, w // f, f)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * f**3, d // f, h // f, w // f)


def _hand_written_depth_to_space(x: torch.Tensor, f: int) -> torch.Tensor:
    b, cf, d, h, w = x.shape
    c = cf // f**3
    x = x.reshape(b, c, f, f, f, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * f, h * f, w * f)


@pytest.mark.parametrize("factor", [2, 4])
def test_monai_pixel_shuffle_is_bitwise_the_hand_written_fold(factor: int) -> None:
    x = torch.randn(2, 3, 8, 16, 24)
    assert torch.equal(space_to_depth(x, factor), _hand_written_space_to_depth(x, factor))
    y = torch.randn(2, 3 * factor**3, 2, 4, 3)
    assert torch.equal(depth_to_space(y, factor), _hand_written_depth_to_space(y, factor))


def test_a_checkpoint_of_the_hand_written_fold_gives_the_same_reconstruction(monkeypatch) -> None:
    # the fold has no weights, so an old checkpoint loads as before; it must also mean the same
    from medlatent.vqvae3d import model as vq_model

    torch.manual_seed(0)
    net = vq_model.VQVAE3d(channels=[8], embedding_dim=4, num_codes=16, num_res_units=1, space_to_depth=2).eval()
    state = net.state_dict()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        now = net(x)[0]
        monkeypatch.setattr(vq_model, "space_to_depth", _hand_written_space_to_depth)
        monkeypatch.setattr(vq_model, "depth_to_space", _hand_written_depth_to_space)
        old = vq_model.VQVAE3d(channels=[8], embedding_dim=4, num_codes=16, num_res_units=1, space_to_depth=2).eval()
        old.load_state_dict(state)
        assert torch.equal(old(x)[0], now)


def test_encoder_and_decoder_mirror_each_other() -> None:
    encoder = Encoder3d(8, [16, 32], 4, num_res_units=1)
    decoder = Decoder3d(4, [32, 16], 8, num_res_units=1, final_channels=8)
    x = torch.randn(2, 8, 16, 16, 8)
    h = encoder(x)
    assert h.shape == (2, 4, 4, 4, 2)
    assert decoder(h).shape == x.shape
