"""transforms.phantoms: synthetic shells with known cavity volume, wall thickness and lesion label."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medlatent.transforms.check import check_manifest
from medlatent.transforms.phantoms import MASK_LABELS, write_phantom_dataset
from medlatent.transforms.pipeline import load_volume


def test_phantom_dataset_ground_truth(tmp_path: Path) -> None:
    start = time.perf_counter()
    manifest = write_phantom_dataset(tmp_path / "ph", n_subjects=40, shape=(32, 32, 32), seed=0)
    assert time.perf_counter() - start < 10
    df = pd.read_csv(manifest)
    assert list(df.columns) == ["subject", "image", "mask", "label", "cavity_volume_mm3", "wall_thickness_mm",
                                "intensity"]
    assert len(df) == 40 and df["label"].sum() == 20
    assert df["cavity_volume_mm3"].std() > 0 and df["wall_thickness_mm"].std() > 0 and df["intensity"].std() > 0
    assert check_manifest(manifest, attributes=["cavity_volume_mm3"], label="label").problems == []
    for _, row in df.head(6).iterrows():
        img, mask = nib.load(tmp_path / "ph" / row["image"]), nib.load(tmp_path / "ph" / row["mask"])
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.header.get_zooms() == (2.0, 2.0, 2.0)
        labels = np.asarray(mask.dataobj)
        assert (labels == MASK_LABELS["cavity"]).sum() * 8 == row["cavity_volume_mm3"]
        assert ((labels == MASK_LABELS["lesion"]).sum() > 0) == bool(row["label"])
        image = img.get_fdata()
        # the blood pool is brighter than the wall; the lesion is brighter than the wall and no
        # brighter than the blood pool (else it would set the intensity scaling's upper percentile)
        wall, pool = image[labels == 1].mean(), image[labels == 2].mean()
        assert pool > 1.3 * wall
        if row["label"]:
            lesion = image[labels == 3].mean()
            assert 1.3 * wall < lesion < 1.1 * pool
            # in this territory of the wall (within ~45 degrees of the +x/+y diagonal, in voxel axes)
            lesion_centre = np.argwhere(labels == 3).mean(0) - np.argwhere(labels == 2).mean(0)
            assert lesion_centre @ np.array([1.0, 1.0, 0.0]) / np.sqrt(2) > 0.7 * np.linalg.norm(lesion_centre)
    # read through the pipeline: LPS comes out RAS
    item = load_volume(tmp_path / "ph" / df["image"][0], {"spatial_size": [32, 32, 32], "intensity": "none"})
    assert nib.aff2axcodes(item["image"].affine.numpy()) == ("R", "A", "S")


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = pd.read_csv(write_phantom_dataset(tmp_path / "a", n_subjects=4, seed=1))
    b = pd.read_csv(write_phantom_dataset(tmp_path / "b", n_subjects=4, seed=1))
    pd.testing.assert_frame_equal(a, b)
    assert np.array_equal(nib.load(tmp_path / "a" / a["image"][2]).get_fdata(),
                          nib.load(tmp_path / "b" / b["image"][2]).get_fdata())


def test_measure_phantom_reads_the_ground_truth_from_intensities() -> None:
    from medlatent.transforms.phantoms import measure_phantom, phantom

    for i in range(6):  # label 0: no lesion; the thresholds find cavity and wall exactly up to noise
        image, _, truth = phantom((32, 32, 32), np.random.default_rng([0, 2 * i]), 0)
        measured = measure_phantom(image)
        assert abs(measured["cavity_volume_mm3"] / truth["cavity_volume_mm3"] - 1) < 0.05
        assert abs(measured["wall_thickness_mm"] - truth["wall_thickness_mm"]) < 0.5
        # the same in model units: scaled intensities, and a blank volume has nothing
        scaled = measure_phantom(image / image.max())
        assert scaled["cavity_volume_mm3"] == measured["cavity_volume_mm3"]
    assert measure_phantom(np.zeros((8, 8, 8))) == {"cavity_volume_mm3": 0.0, "wall_thickness_mm": 0.0}


def test_wall_thickness_varies_on_its_own_over_voxels_the_grid_resolves() -> None:
    # a traversal can only show the wall moving alone if the data let it: thickness independent of the
    # cavity, and a range of several voxels, which the thresholds read on label-0 phantoms
    from scipy.stats import spearmanr

    from medlatent.transforms.phantoms import SPACING_MM, measure_phantom, phantom

    truths, measured = [], []
    for i in range(40):
        image, _, truth = phantom((32, 32, 32), np.random.default_rng([0, i]), 0)
        truths.append(truth)
        measured.append(measure_phantom(image)["wall_thickness_mm"])
    wall = np.array([t["wall_thickness_mm"] for t in truths])
    cavity = np.array([t["cavity_volume_mm3"] for t in truths])
    assert abs(spearmanr(wall, cavity)[0]) < 0.35
    assert np.ptp(wall) / SPACING_MM > 1.5  # voxels
    assert spearmanr(wall, measured)[0] > 0.95
