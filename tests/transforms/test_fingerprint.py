"""transforms.fingerprint: a phantom-trained fingerprint flags a head CT and a brain MRI, and not another phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlatent.transforms.fingerprint import differences, intensity_percentiles, summarize, volume_facts
from medlatent.transforms.pipeline import load_volume

CFG = {"spatial_size": [16, 16, 16], "intensity": "percentile", "spacing": None}


def _facts(path: Path) -> dict:
    return volume_facts(load_volume(path, CFG)["image"].meta)


@pytest.fixture(scope="module")
def phantom_fingerprint(tmp_path_factory) -> dict:
    from medlatent.transforms.phantoms import write_phantom_dataset

    folder = write_phantom_dataset(tmp_path_factory.mktemp("train"), n_subjects=6, shape=(32, 32, 32), seed=0).parent
    return summarize([_facts(p) for p in sorted((folder / "images").glob("*.nii.gz"))])


def test_facts_are_those_of_the_file_on_disk(ixi_t1: Path) -> None:
    facts = _facts(ixi_t1)
    assert facts["shape"] == [120, 120, 90] and facts["orientation"] == "PSR"
    np.testing.assert_allclose(facts["spacing"], [2.0, 2.0, 2.0], atol=1e-5)
    assert facts["percentiles"][0] <= facts["percentiles"][1] < facts["percentiles"][2]


def test_another_phantom_looks_like_the_training_phantoms(phantom_fingerprint: dict, tmp_path: Path) -> None:
    from medlatent.transforms.phantoms import write_phantom_dataset

    folder = write_phantom_dataset(tmp_path, n_subjects=3, shape=(32, 32, 32), seed=7).parent
    for image in sorted((folder / "images").glob("*.nii.gz")):
        assert differences(phantom_fingerprint, _facts(image)) == [], image


@pytest.mark.parametrize("scan, expected", [
    ("ct_samples/CT_pitch.nii.gz", ["intensity", "spacing", "shape", "orientation"]),
    ("ct_samples/CT_AVM.nii.gz", ["intensity", "shape"]),
    ("ixi_t1_2mm/T1/IXI012-HH-1211_T1.nii.gz", ["intensity", "shape", "orientation"]),
])
def test_ct_and_brain_mri_do_not_look_like_phantoms(phantom_fingerprint: dict, data_dir: Path, scan: str,
                                                    expected: list[str]) -> None:
    found = differences(phantom_fingerprint, _facts(data_dir / scan))
    for word in expected:
        assert any(f.startswith(word) for f in found), (word, found)


def test_percentiles_ignore_non_finite_voxels_and_subsample_big_volumes() -> None:
    data = np.arange(1000, dtype=np.float32)
    data[5] = np.nan
    np.testing.assert_allclose(intensity_percentiles(data)[1], 500.0, atol=1.0)
    big = np.random.default_rng(0).normal(size=3_000_000)
    np.testing.assert_allclose(intensity_percentiles(big)[1], 0.0, atol=0.01)
