"""The attention benchmark's candidate grid (benchmarks/attention_faithfulness.py, run as a script)."""

import sys
from pathlib import Path

import pytest

from medlatent.attrivae.model import AttriVAE
from medlatent.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from attention_faithfulness import _candidates, eligible  # noqa: E402  (a script in benchmarks/, not a package)


def _model() -> AttriVAE:  # stem 8x8x2, levels.0 4x4x1: levels.0 is coarser than MIN_VOXELS
    return AttriVAE((16, 16, 4), channels=(4, 4), latent_dim=4, bottleneck_channels=4, num_outputs=1)


def test_given_layers_and_patches_replace_the_usable_layers_and_the_single_occlusion_patch():
    model = _model()
    default = _candidates(model, "default")
    assert {c.layer for c in default if c.uses_layer} == {"encoder.stem"}
    assert [c.patch_mm for c in default if c.method == "occlusion"] == [16.0]
    given = _candidates(model, "default", layers=["encoder.levels.0", "encoder.stem"], patch_mm=(8.0, 24.0))
    layer_settings = [(c.method, c.layer) for c in given if c.uses_layer]
    assert layer_settings == [(m, layer) for m in ("hirescam", "gradcam", "guided_gradcam")
                              for layer in ("encoder.levels.0", "encoder.stem")]
    assert [c.patch_mm for c in given if c.method == "occlusion"] == [8.0, 24.0]
    assert {c.baseline for c in given if c.method == "integrated_gradients"} == {"blurred", "zeros"}


def test_an_unknown_layer_is_named_with_the_choices():
    with pytest.raises(InputError, match="unknown encoder layer 'encoder.levels.7'.*encoder.stem"):
        _candidates(_model(), "default", layers=["encoder.levels.7"])


def test_eligible_is_the_best_enrichment_among_maps_that_pass_the_check_and_beat_random_deletion():
    def row(target, enrichment, sanity, p):
        return {"target": target, "enrichment": enrichment, "sanity_pass": sanity, "deletion_p": p}

    rows = [row("class", 9.0, False, 0.001),     # fails the randomisation check
            row("class", 5.0, True, 0.2),        # deletion no better than random
            row("class", 2.0, True, 0.001), row("class", 3.0, True, 0.004), row("class", float("nan"), True, 0.001),
            row("hippocampus", 2.5, False, 0.001)]
    chosen = eligible(rows)
    assert chosen["class"]["enrichment"] == 3.0
    assert chosen["hippocampus"] is None
