import numpy as np
import pytest
import torch

from medlatent.attrivae.traversal import (fit_calibration, interpolate_latents, measure_traversal, phantom_measure,
                                          step_labels, traverse_latents)


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


def test_step_labels_never_leave_the_training_range():
    # a steep fit through the origin would promise negative volumes at z = -3
    labels, clipped = step_labels(np.linspace(-3, 3, 9), {"slope": 4000.0, "intercept": 5000.0}, 2000.0, 11000.0)
    assert labels.min() >= 2000.0 and labels.max() <= 11000.0
    assert clipped.tolist() == [True, True, True, False, False, False, False, True, True]  # -7000 .. 17000
    labels, clipped = step_labels([0.0, 1.0], {}, 1.0, 2.0)
    assert np.isnan(labels).all() and not clipped.any()


class _Shells(torch.nn.Module):
    """A stand-in decoder with a known answer: dim 0 sets the cavity radius, dim 1 nothing (or the wall)."""

    def __init__(self, leak: float = 0.0, wall: float = 0.5, contrast: bool = True) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.leak, self.wall, self.contrast = leak, wall, contrast

    def encode(self, x):
        return torch.zeros(len(x), 4), torch.zeros(len(x), 4)

    def decode(self, z):
        grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij")) - 15.5
        radius = grid.norm(dim=0)
        out = []
        for row in z:
            cavity = 6.0 + row[0]
            thickness = 2.5 + self.leak * row[0] + self.wall * row[1]
            image = torch.full((32, 32, 32), 0.05)
            image[radius < cavity + thickness] = 0.5
            if self.contrast:  # without it the organ is one grey silhouette, as a collapsed decoder draws it
                image[radius < cavity] = 1.0
            out.append(image[None])
        return torch.stack(out)


def _amap():
    from medlatent.attrivae.attributes import AttributeMap

    return AttributeMap(names=["cavity_volume_mm3", "wall_thickness_mm"], regularized=["cavity_volume_mm3",
                        "wall_thickness_mm"], dims=[0, 1], minimum=[0.0, 0.0], maximum=[1.0, 1.0], latent_dim=4)


@pytest.mark.parametrize("leak", [0.0, 1.0])
def test_measured_traversal_finds_the_attribute_and_its_leak(leak):
    sd = {"cavity_volume_mm3": 2000.0, "wall_thickness_mm": 1.0}
    result = measure_traversal(_Shells(leak), torch.zeros(2, 1, 32, 32, 32), _amap(), phantom_measure((2.0, 2.0, 2.0)), sd, steps=5,
                               value_range=(-2.0, 2.0))
    cavity = result["cavity_volume_mm3"]
    assert cavity["spearman"] == pytest.approx(1.0) and cavity["subjects"] == 2
    if leak:  # the wall thickens with the cavity: a visible off-target change
        assert cavity["off_target"] > 0.3
    else:
        assert cavity["off_target"] < 0.1
    # moving dim 1 moves the wall only
    assert result["wall_thickness_mm"]["spearman"] > 0.9


def test_an_attribute_that_does_not_move_has_no_off_target_ratio():
    # dim 1 decodes to the same volume at every step: its ratio would divide by zero, so it is NaN, not 1e12
    sd = {"cavity_volume_mm3": 2000.0, "wall_thickness_mm": 1.0}
    result = measure_traversal(_Shells(wall=0.0), torch.zeros(2, 1, 32, 32, 32), _amap(), phantom_measure((2.0,) * 3),
                               sd, steps=5, value_range=(-2.0, 2.0))
    wall = result["wall_thickness_mm"]
    assert wall["spearman"] == 0.0 and wall["change_sd"]["wall_thickness_mm"] == 0.0
    assert np.isnan(wall["off_target"]) and np.isnan(wall["off_target_by"]["cavity_volume_mm3"])
    # the cavity's own change is reported with its ratio: 2 voxels of radius either way, thousands of mm^3
    cavity = result["cavity_volume_mm3"]
    assert cavity["change_sd"]["cavity_volume_mm3"] > 1.0 and cavity["off_target"] < 0.1


def test_reconstructions_are_measurable_only_with_the_contrast_the_measure_reads():
    from medlatent.attrivae.traversal import measure_reconstructions

    x = torch.zeros(3, 1, 32, 32, 32)
    drawn = measure_reconstructions(_Shells(), x, phantom_measure((2.0,) * 3))
    assert drawn["wall_thickness_mm"].shape == (3,)
    # a 2.5-voxel shell of 2 mm voxels around a 6-voxel sphere
    assert np.allclose(drawn["wall_thickness_mm"], 5.0, atol=1.0)
    assert np.allclose(drawn["cavity_volume_mm3"], 4 / 3 * np.pi * 6.0**3 * 8.0, rtol=0.1)
    # one grey silhouette: the wall cannot be read (the cavity is taken for the whole organ, or is empty)
    flat = measure_reconstructions(_Shells(contrast=False), x, phantom_measure((2.0,) * 3))
    assert np.abs(flat["wall_thickness_mm"] - 5.0).min() > 2.0


def test_intracranial_measure_reads_each_decoded_step():
    """IXI's judge-free reading: the intracranial volume of each skull-stripped step, in mm^3 on the model's grid."""
    import numpy as np
    import torch

    from medlatent.attrivae.traversal import intracranial_measure

    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0) - 11.5] * 3, indexing="ij"))
    r = grid.pow(2).sum(0).sqrt()
    steps = torch.stack([(r <= radius).float()[None] * 0.8 for radius in (6, 8, 10)])  # [3, 1, 24, 24, 24]
    read = intracranial_measure((2.0, 2.0, 2.0))(steps)
    assert set(read) == {"icv_mm3"} and read["icv_mm3"].shape == (3,)
    expected = np.array([(r <= radius).sum().item() * 8.0 for radius in (6, 8, 10)])
    np.testing.assert_allclose(read["icv_mm3"], expected)


def test_each_attribute_can_be_traversed_over_its_own_range():
    # dim 0 over (0, 2) only: the cavity radius grows 2 voxels, not 4 as over (-2, 2); its change halves
    sd = {"cavity_volume_mm3": 2000.0, "wall_thickness_mm": 1.0}
    args = (_Shells(), torch.zeros(1, 1, 32, 32, 32), _amap(), phantom_measure((2.0,) * 3), sd)
    wide = measure_traversal(*args, steps=5, value_range=(-2.0, 2.0))
    own = measure_traversal(*args, steps=5, value_range={"cavity_volume_mm3": (0.0, 2.0),
                                                         "wall_thickness_mm": (-2.0, 2.0)})
    assert own["cavity_volume_mm3"]["spearman"] == pytest.approx(1.0)
    assert own["cavity_volume_mm3"]["change_sd"]["cavity_volume_mm3"] < wide["cavity_volume_mm3"]["change_sd"][
        "cavity_volume_mm3"] * 0.8
    assert own["wall_thickness_mm"] == wide["wall_thickness_mm"]
