import torch

from medlatent.attrivae.ar_loss import ar_loss, attribute_regularization
from medlatent.attrivae.model import AttriVAE


def test_zero_when_latent_orders_batch_like_attribute():
    a = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7])
    z = 3.0 * a - 1.0  # same order, different scale
    assert attribute_regularization(z, a, delta=1000.0).mean() < 1e-6


def test_reversed_order_costs_more_than_random_and_correct():
    torch.manual_seed(0)
    a = torch.rand(16)
    same = attribute_regularization(a, a, delta=10.0).mean()
    shuffled = attribute_regularization(a[torch.randperm(16)], a, delta=10.0).mean()
    reversed_ = attribute_regularization(-a, a, delta=10.0).mean()
    assert same < shuffled < reversed_
    # reversed with a steep tanh: every off-diagonal pair costs 2
    assert abs(float(attribute_regularization(-a, a, delta=1e4).mean()) - 2 * 15 / 16) < 1e-3


def test_sums_over_attributes_on_their_dims():
    a = torch.rand(8, 2)
    z = torch.zeros(8, 4)
    z[:, 2], z[:, 0] = a[:, 0], -a[:, 1]  # attribute 0 right on dim 2, attribute 1 reversed on dim 0
    both = ar_loss(z, a, dims=[2, 0], delta=1e4).mean()
    only_first = ar_loss(z, a[:, :1], dims=[2], delta=1e4).mean()
    assert only_first < 1e-6 and both > 1.0


def test_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = AttriVAE((16, 16, 16), channels=(4, 8), latent_dim=4, bottleneck_channels=4, num_outputs=0)
    x = torch.rand(6, 1, 16, 16, 16)
    attributes = torch.rand(6, 1)
    mu, _ = model.encode(x)
    ar_loss(mu, attributes, dims=[0], delta=10.0).mean().backward()
    grad = model.encoder.stem.weight.grad
    assert grad is not None and grad.abs().sum() > 0
