"""transforms.medmnist: official MedMNIST 3D npz read directly, converted to NIfTI + manifest."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.errors import InputError
from medlatent.transforms.medmnist import load_npz, npz_to_nifti


@pytest.fixture(scope="module")
def adrenal(data_dir: Path) -> Path:
    return data_dir / "medmnist3d" / "adrenalmnist3d.npz"


def test_adrenal_split_sizes_and_labels(adrenal: Path) -> None:
    data = load_npz(adrenal)
    assert {k: v[0].shape for k, v in data.items()} == {
        "train": (1188, 28, 28, 28), "val": (98, 28, 28, 28), "test": (298, 28, 28, 28)}
    counts = {k: np.bincount(v[1]).tolist() for k, v in data.items()}
    assert counts == {"train": [929, 259], "val": [76, 22], "test": [229, 69]}
    assert data["train"][0].dtype == np.uint8 and data["train"][1].shape == (1188,)


def test_npz_to_nifti_preserves_volumes_labels_and_splits(adrenal: Path, tmp_path: Path) -> None:
    full = np.load(adrenal)
    small = tmp_path / "small.npz"
    # a few volumes per split keeps the test fast; the layout is the official one
    np.savez(small, **{k: full[k][:3] for k in full.files})
    manifest = npz_to_nifti(small, tmp_path / "out")
    df = pd.read_csv(manifest)
    assert list(df.columns) == ["subject", "image", "mask", "label", "split"]
    assert df["split"].tolist() == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    for _, row in df.iterrows():
        split, i = row["subject"].split("_")
        img = nib.load(tmp_path / "out" / row["image"])
        assert np.array_equal(np.asarray(img.dataobj), full[f"{split}_images"][int(i)])
        assert np.allclose(img.affine, np.eye(4)) and img.header.get_zooms() == (1.0, 1.0, 1.0)
        mask = np.asarray(nib.load(tmp_path / "out" / row["mask"]).dataobj)
        assert np.array_equal(mask, full[f"{split}_images"][int(i)] > 127)
        assert row["label"] == full[f"{split}_labels"][int(i), 0]


def test_bad_npz_raises_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(InputError, match="missing key 'val_images'"):
        npz_to_nifti(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
