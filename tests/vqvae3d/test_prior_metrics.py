"""Prior metrics: the unigram baseline and the MMD two-sample test."""

import numpy as np
import pytest
import torch

from medlatent.vqvae3d.prior_metrics import mmd_test, unigram_bits_per_code


def test_unigram_baseline_and_mmd_statistic() -> None:
    uniform = [torch.arange(8).repeat(4).view(4, 2, 2, 2)]
    assert unigram_bits_per_code(uniform, uniform, [8]) == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    same = mmd_test(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)), permutations=200)
    shifted = mmd_test(rng.normal(size=(20, 3)), rng.normal(2.0, size=(20, 3)), permutations=200)
    assert same[1] > 0.05 and shifted[1] < 0.01 and shifted[0] > same[0]
