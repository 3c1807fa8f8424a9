import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from medlatent.attrivae.attention import default_layer, grad_cam, randomized_copy, resolve_layer
from medlatent.attrivae.model import AttriVAE
from medlatent.attrivae.task import plain
from medlatent.errors import InputError


def test_default_layer_is_last_with_four_voxels_per_axis():
    model = AttriVAE((64, 64, 48), channels=(4, 4, 4, 4), latent_dim=4, bottleneck_channels=4, num_outputs=1)
    assert default_layer(model) == "encoder.levels.2"  # 8x8x6; the levels below are 4x4x3
    with pytest.raises(InputError, match="encoder.levels.0"):
        resolve_layer(model, "decoder.head")


def test_maps_are_in_unit_range_with_input_shape():
    torch.manual_seed(0)
    model = AttriVAE((16, 16, 16), channels=(4, 8), latent_dim=4, bottleneck_channels=4, num_outputs=3)
    x = torch.rand(2, 1, 16, 16, 16)
    for dim in (1, None):
        cam = grad_cam(model, x, dim=dim)
        assert cam.shape == x.shape and torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_negative_evidence_is_the_positive_evidence_of_the_negated_dimension():
    torch.manual_seed(0)
    model = AttriVAE((16, 16, 16), channels=(4, 8), latent_dim=4, bottleneck_channels=4, num_outputs=0).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    flipped = copy.deepcopy(model)
    with torch.no_grad():  # mu[:, 1] -> -mu[:, 1]: the rows of to_moments that produce it
        flipped.to_moments.weight[1].neg_()
        flipped.to_moments.bias[1].neg_()
    negative = grad_cam(model, x, dim=1, evidence="negative")
    assert negative.max() > 0
    torch.testing.assert_close(negative, grad_cam(flipped, x, dim=1))
    positive = grad_cam(model, x, dim=1)
    # the two sides come from disjoint parts of the layer map, so neither is the other
    assert not torch.allclose(positive, negative)
    with pytest.raises(InputError, match="positive, negative"):
        grad_cam(model, x, dim=1, evidence="absolute")


@pytest.fixture(scope="module")
def lesion_subjects(trained_run):
    """Label-1 phantoms preprocessed as in training, with their masks (lesion = 3)."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    from medlatent.commands.runs import load_run

    state = load_run(trained_run, "attention")
    records, _ = load_split_records(state.cfg["data"])
    positives = [r for split in records.values() for r in split if r["label"] == 1]
    dataset = make_dataset(positives, {**state.cfg["data"], "cache": "none"}, train=False)
    items = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([plain(i["image"]).float() for i in items])
    lesion = torch.stack([plain(i["mask"]) == 3 for i in items]).float()
    return state, x, lesion


def test_class_attention_concentrates_on_the_lesion(lesion_subjects):
    state, x, lesion = lesion_subjects
    share = lesion.flatten(1).mean(1)
    enrichment = {}
    for method in ("hirescam", "gradcam"):
        cam = grad_cam(state.model, x, method=method)
        inside = (cam * lesion).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-12)
        enrichment[method] = float((inside / share).median())
        print(f"{method}: median {float(inside.median()):.3f} of the map mass inside the lesion, "
              f"lesion share {float(share.median()):.4f}, enrichment x{enrichment[method]:.2f}")
    # the default map puts clearly more of its mass on the lesion than the lesion's share of the
    # volume: measured x1.85 here (Grad-CAM x1.95); a margin for other CPUs' arithmetic
    assert enrichment["hirescam"] > 1.3


def test_randomized_model_gives_different_maps(lesion_subjects):
    state, x, _ = lesion_subjects
    # signed maps: a ReLU map of a random model is often all zeros, for which Spearman is undefined
    trained = grad_cam(state.model, x[:6], evidence="signed")
    random = grad_cam(randomized_copy(state.model), x[:6], evidence="signed")
    rhos = [spearmanr(a.flatten().numpy(), b.flatten().numpy())[0] for a, b in zip(trained, random)]
    rho = float(np.nanmean(rhos))
    print(f"Spearman(trained, randomized) = {rho:.3f}")
    assert rho < 0.5
