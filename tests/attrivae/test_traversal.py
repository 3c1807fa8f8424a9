import numpy as np
import pytest
import torch

from medlatent.attrivae.traversal import fit_calibration, interpolate_latents, traverse_latents


def test_traverse_moves_only_the_chosen_dim():
    mu = torch.arange(5.0)
    z = traverse_latents(mu, 2, torch.tensor([-1.0, 0.0, 3.0]))
    assert z.shape == (3, 5) and z[:, 2].tolist() == [-1.0, 0.0, 3.0]
    assert torch.equal(z[:, [0, 1, 3, 4]], mu[[0, 1, 3, 4]].expand(3, 4))


def test_interpolation_hits_both_ends():
    a, b = torch.zeros(4), torch.ones(4)
    z = interpolate_latents(a, b, 5)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b) and torch.allclose(z[2], torch.full((4,), 0.5))


def test_calibration_recovers_a_linear_map():
    z = np.linspace(-2, 2, 20)
    fit = fit_calibration(z, 3 * z + 7)
    assert fit["slope"] == pytest.approx(3) and fit["intercept"] == pytest.approx(7) and fit["r2"] == pytest.approx(1)
