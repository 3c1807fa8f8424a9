"""transforms.brain: intracranial volume of a skull-stripped scan, from its intensities alone."""

import numpy as np
import pytest

from medlatent.transforms.brain import intracranial_volume_mm3


def _brain(radius: float, ventricle: float = 0.0, shape: int = 40) -> np.ndarray:
    grid = np.indices((shape,) * 3) - (shape - 1) / 2
    r = np.sqrt((grid ** 2).sum(0))
    image = np.where(r <= radius, 0.7, 0.0).astype(np.float32)
    image[r <= ventricle] = 0.01  # CSF darker than the threshold: inside the brain, still intracranial
    return image


def test_volume_of_a_ball_with_dark_csf_inside_and_noise_outside():
    rng = np.random.default_rng(0)
    image = _brain(12, ventricle=4) + rng.uniform(0, 0.02, (40,) * 3).astype(np.float32)
    image[0, 0, 0] = 0.7  # a speck outside the brain is not the brain
    expected = 4 / 3 * np.pi * 12 ** 3 * 8.0  # 2 mm voxels
    assert intracranial_volume_mm3(image, (2.0, 2.0, 2.0)) == pytest.approx(expected, rel=0.03)


def test_larger_brains_measure_larger_in_any_intensity_unit():
    small, large = _brain(9), _brain(13)
    assert intracranial_volume_mm3(large, (1, 1, 1)) > 2.5 * intracranial_volume_mm3(small, (1, 1, 1))
    assert intracranial_volume_mm3(large * 800 + 30, (1, 1, 1)) == intracranial_volume_mm3(large, (1, 1, 1))


def test_no_contrast_measures_zero():
    assert intracranial_volume_mm3(np.zeros((8, 8, 8)), (1, 1, 1)) == 0.0
