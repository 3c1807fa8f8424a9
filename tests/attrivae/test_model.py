import pytest
import torch

from medlatent.attrivae.model import AttriVAE
from medlatent.blocks import Decoder3d, Encoder3d


def test_shapes_and_shared_blocks():
    model = AttriVAE((32, 32, 16), channels=(4, 8), latent_dim=6, bottleneck_channels=4, num_outputs=3)
    assert isinstance(model.encoder, Encoder3d) and isinstance(model.decoder, Decoder3d)
    out = model(torch.rand(2, 1, 32, 32, 16))
    assert out["recon"].shape == (2, 1, 32, 32, 16)
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (2, 6)
    assert out["logits"].shape == (2, 3)
    assert 0 <= out["recon"].min() and out["recon"].max() <= 1  # sigmoid output


def test_classifier_head_is_latent_32_16_classes_with_batchnorm():
    model = AttriVAE((16, 16, 16), channels=(4, 8), latent_dim=64, bottleneck_channels=4, num_outputs=1)
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.classifier.modules()) == 2


def test_eval_is_deterministic_and_training_samples():
    torch.manual_seed(0)
    model = AttriVAE((16, 16, 16), channels=(4, 8), latent_dim=4, bottleneck_channels=4, num_outputs=0)
    x = torch.rand(2, 1, 16, 16, 16)
    model.eval()
    assert torch.equal(model(x)["z"], model(x)["mu"])
    model.train()
    assert not torch.equal(model(x)["z"], model(x)["mu"])


def test_rejects_sizes_the_levels_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        AttriVAE((30, 32, 32), channels=(4, 8))


def test_space_to_depth_keeps_the_volume_contract_and_reports_folded_layer_sizes():
    model = AttriVAE((32, 32, 16), channels=(8, 16), latent_dim=6, bottleneck_channels=4, num_outputs=1,
                     space_to_depth=2, decoder_final_channels=4)
    assert model.encoder.stem.in_channels == 8  # one channel per voxel of a 2x2x2 block
    out = model(torch.rand(2, 1, 32, 32, 16))
    assert out["recon"].shape == (2, 1, 32, 32, 16)
    shapes = model.layer_shapes()
    assert shapes["encoder.stem"] == (16, 16, 8) and shapes["encoder.levels.1"] == (4, 4, 2)
    with pytest.raises(ValueError, match="space_to_depth \\* 2\\*\\*len"):
        AttriVAE((20, 20, 20), channels=(8, 16), space_to_depth=2)
    with pytest.raises(ValueError, match="power of two"):
        AttriVAE((24, 24, 24), channels=(8,), space_to_depth=3)


def test_output_init_sets_where_the_untrained_decoder_starts():
    torch.manual_seed(0)
    z = torch.randn(4, 6)
    kwargs = dict(channels=(4, 8), latent_dim=6, bottleneck_channels=4, num_outputs=0)
    default = AttriVAE((16, 16, 16), **kwargs).eval().decode(z)
    dark = AttriVAE((16, 16, 16), output_init=0.05, **kwargs).eval()
    assert dark.decoder.head[-1].bias.item() == pytest.approx(-2.944, abs=1e-3)  # logit(0.05)
    # PyTorch's init starts every voxel near 0.5; with output_init near the background level it starts there
    assert abs(default.median().item() - 0.5) < 0.1
    assert abs(dark.decode(z).median().item() - 0.05) < 0.03
    linear = AttriVAE((16, 16, 16), output="linear", output_init=0.05, **kwargs)
    assert linear.decoder.head[-1].bias.item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="output_init"):
        AttriVAE((16, 16, 16), output_init=1.0, **kwargs)
