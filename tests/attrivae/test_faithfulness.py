import mmap
import time

import numpy as np
import pytest
import torch

from medlatent.attrivae.attention import MapSettings, attention_map, blurred, target_score
from medlatent.attrivae.faithfulness import (cascading_randomization, deletion_insertion, enrichment, iou, measure_cost,
                                             median_ci, paired_p, pointing_game, randomization_check, spearman)


def _ball(shape=(24, 24, 24), centre=(12, 12, 12), radius=8.0) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    return ((grid - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)).norm(dim=0) < radius).float()


def test_a_map_equal_to_the_structure_scores_one_over_its_share_and_points_at_it():
    body = _ball()[None, None]
    structure = _ball(centre=(14, 12, 12), radius=3.0)[None, None] * body
    share = float(structure.sum()) / float(body.sum())
    np.testing.assert_allclose(enrichment(structure, structure, body), [1 / share], rtol=1e-9)
    assert pointing_game(structure, structure).tolist() == [True]
    np.testing.assert_allclose(iou(structure, structure), [1.0])


def test_a_random_map_over_the_body_scores_about_one():
    rng = np.random.default_rng(0)
    body = _ball()[None, None].numpy()
    structure = _ball(centre=(14, 12, 12), radius=4.0)[None, None].numpy()
    maps = rng.random((20, *body.shape[1:])) * body
    scores = enrichment(maps, np.repeat(structure, 20, 0), np.repeat(body, 20, 0))
    median, low, high = median_ci(scores)
    assert abs(median - 1.0) < 0.1 and low <= median <= high and high - low < 0.2
    # mass outside the body counts against the map
    assert enrichment(np.ones_like(body), structure, body)[0] == pytest.approx(float(body.sum() / body.size))


def test_pointing_game_allows_one_cell_of_the_map_grid():
    structure = torch.zeros(1, 1, 16, 16, 16)
    structure[..., 4:6, 4:6, 4:6] = 1
    near, far = torch.zeros_like(structure), torch.zeros_like(structure)
    near[..., 6, 5, 5] = 1  # one voxel off
    far[..., 9, 5, 5] = 1  # four voxels off
    assert pointing_game(near, structure).tolist() == [True]
    assert pointing_game(far, structure).tolist() == [False]
    assert pointing_game(far, structure, cell=(4, 4, 4)).tolist() == [True]
    assert pointing_game(near, torch.zeros_like(structure)).tolist() == [False]


def test_median_ci_and_paired_p():
    assert median_ci([2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert np.isnan(median_ci([np.nan])[0])
    better, worse = np.arange(10.0), np.arange(10.0) + 1
    assert paired_p(better, worse, "less") < 0.01
    assert paired_p(worse, better, "less") > 0.9
    assert np.isnan(paired_p(better, better))


def test_spearman_of_maps():
    a = torch.rand(1, 8, 8, 8)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.zeros_like(a)) == 0.0


def test_deletion_follows_the_voxels_the_target_reads():
    """A 'model' that sums a cube: the cube as the map deletes the target at once, random orders do not."""
    region = torch.zeros(1, 1, 16, 16, 16)
    region[..., 2:6, 2:6, 2:6] = 1

    def score(volumes: torch.Tensor) -> torch.Tensor:
        return (volumes * region).flatten(1).sum(1)

    x = torch.ones_like(region)
    result = deletion_insertion(score, x, region, torch.zeros_like(x), steps=16, n_random=4)
    assert result["deletion_curve"][0] == pytest.approx(64.0) and result["deletion_curve"][1] == pytest.approx(0.0)
    assert result["deletion_auc"] < 0.1 * result["random_deletion_auc"]
    assert result["insertion_auc"] > 1.8 * result["random_insertion_auc"]


def test_cascading_randomization_changes_layers_from_the_top(lesion_subjects):
    state, *_ = lesion_subjects
    stages = list(cascading_randomization(state.model))
    names = [name for name, _ in stages]
    assert names[:3] == ["classifier", "to_moments", "encoder.head"] and names[-1] == "encoder.stem"
    _, first = stages[0]
    trained = dict(state.model.named_parameters())
    changed = {n for n, p in first.named_parameters() if not torch.equal(p, trained[n])}
    assert changed and all(n.startswith("classifier.") for n in changed)
    # an attribute's mu_k does not go through the classifier: its cascade starts at to_moments
    assert next(cascading_randomization(state.model, classifier=False))[0] == "to_moments"


def test_randomization_check_separates_the_trained_phantom_model(lesion_subjects):
    state, x, *_ = lesion_subjects
    settings = MapSettings()  # the default class map

    def map_of(model, volumes):
        return attention_map(model, volumes, None, settings)

    result = randomization_check(map_of, state.model, x[:6])
    print(result)
    # two trained maps agree; a map of the model randomised from any layer down does not
    assert result["trained_rho"] > 0.5 and result["passed"]


def test_phantom_class_map_beats_random_in_deletion(lesion_subjects):
    state, x, lesion, _ = lesion_subjects
    aucs, random = [], []
    for volume in x[:8]:
        volume = volume[None]
        cam = attention_map(state.model, volume, None, MapSettings())
        result = deletion_insertion(target_score(state.model, volume), volume, cam, blurred(volume), n_random=3)
        aucs.append(result["deletion_auc"])
        random.append(result["random_deletion_auc"])
    print("deletion AUC", np.round(aucs, 2), "random", np.round(random, 2))
    assert np.median(np.subtract(aucs, random)) < 0 and paired_p(aucs, random) < 0.05


def test_measure_cost_reports_time_and_memory():
    # Fresh anonymous pages, so resident memory must grow by 256 MiB whatever torch's or
    # glibc's allocator kept from earlier tests (a torch tensor may reuse such memory: CI saw +0 MiB).
    def hold_256_mib() -> int:
        size = 256 * 2**20
        with mmap.mmap(-1, size) as block:
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1
            time.sleep(0.3)  # long enough for the sampler to run even when the CPU is loaded
            return sum(block[offset] for offset in range(0, size, 2**20))

    result, seconds, peak_mib = measure_cost(hold_256_mib)
    assert result == 256 and seconds > 0 and 200 < peak_mib < 400
