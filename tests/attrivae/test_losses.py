import torch

from medlatent.attrivae.losses import attrivae_loss, classification_loss, kl_divergence, reconstruction_loss


def test_reconstruction_is_summed_per_volume():
    x = torch.zeros(2, 1, 4, 4, 4)
    y = torch.ones(2, 1, 4, 4, 4)
    y[1] *= 2
    assert torch.allclose(reconstruction_loss(y, x), torch.tensor([64.0, 256.0]))


def test_kl_zero_at_prior_and_positive_elsewhere():
    assert torch.allclose(kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))
    assert (kl_divergence(torch.ones(3, 5), torch.full((3, 5), -1.0)) > 0).all()


def test_classification_binary_and_multiclass():
    binary = classification_loss(torch.tensor([[10.0], [-10.0]]), torch.tensor([1, 0]))
    assert binary.shape == (2,) and (binary < 1e-3).all()
    multi = classification_loss(torch.tensor([[0.0, 10.0, 0.0]]), torch.tensor([0]))
    assert multi.item() > 5


def test_total_weights_each_term():
    torch.manual_seed(0)
    out = {"recon": torch.rand(4, 1, 4, 4, 4), "mu": torch.randn(4, 3), "logvar": torch.zeros(4, 3),
           "z": torch.randn(4, 3), "logits": torch.randn(4, 1)}
    x, attrs, labels = torch.rand(4, 1, 4, 4, 4), torch.rand(4, 1), torch.tensor([0, 1, 0, 1])
    terms = attrivae_loss(out, x, attrs, labels, [0], beta=2.0, gamma=200.0, delta=10.0, alpha=3.0)
    expected = terms["recon"] + 2 * terms["kl"] + 200 * terms["ar"] + 3 * terms["cls"]
    assert torch.allclose(terms["loss"], expected)
    assert all(v.shape == (4,) for v in terms.values())
