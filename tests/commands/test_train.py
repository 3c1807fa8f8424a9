"""``medlatent train`` refuses bad data before writing anything: exit 2, the row and file named, no run folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from medlatent.commands.cli import main

BAD_ROW = 4  # CSV row of the bad scan (header = row 1): the third data row, in the train split
SPLITS = ["train"] * 5 + ["val", "val", "test"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_subjects=8, shape=(16, 16, 16), seed=0)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI header claiming ``shape`` with (almost) no voxels after it."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


def _make_bad(kind: str, image: Path, mask: Path, folder: Path) -> dict:
    """The row's new cells for ``kind``; files go in ``folder``."""
    img = nib.load(image)
    data, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    if kind == "missing":
        return {"image": str(folder / "gone.nii.gz")}
    if kind == "zero-byte":
        (folder / "empty.nii.gz").write_bytes(b"")
        return {"image": str(folder / "empty.nii.gz")}
    if kind == "truncated":
        raw = _nifti(folder / "whole.nii.gz", np.random.default_rng(0).random((16, 16, 16), np.float32), affine)
        (folder / "truncated.nii.gz").write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])
        return {"image": str(folder / "truncated.nii.gz")}
    if kind == "4D":
        return {"image": str(_nifti(folder / "four_d.nii.gz", np.stack([data, data], -1), affine))}
    if kind == "not-nifti":
        (folder / "notes.nii.gz").write_text("subject,age\nx,3\n")
        return {"image": str(folder / "notes.nii.gz")}
    if kind in ("NaN", "Inf"):
        data[3, 4, 5] = np.nan if kind == "NaN" else np.inf
        return {"image": str(_nifti(folder / f"{kind}.nii.gz", data, affine))}
    if kind == "constant":
        return {"image": str(_nifti(folder / "constant.nii.gz", np.full_like(data, 3.0), affine))}
    if kind == "huge-header":
        return {"image": str(_header_only(folder / "huge.nii", (10000, 10000, 10000)))}
    if kind == "mask-10mm-off":
        shifted = affine.copy()
        shifted[0, 3] += 10.0
        return {"mask": str(_nifti(folder / "mask_off.nii.gz", np.asarray(nib.load(mask).dataobj), shifted))}
    if kind == "mask-shape":
        return {"mask": str(_nifti(folder / "mask_shape.nii.gz", np.zeros((8, 16, 16), np.uint8), affine))}
    raise AssertionError(kind)


CASES = [  # kind, the bad file's name, words of the message
    ("missing", "gone.nii.gz", "not found"),
    ("zero-byte", "empty.nii.gz", "empty (0 bytes)"),
    ("truncated", "truncated.nii.gz", "unreadable or truncated"),
    ("4D", "four_d.nii.gz", "expected a 3D volume"),
    ("not-nifti", "notes.nii.gz", "not a readable image"),
    ("NaN", "NaN.nii.gz", "NaN or Inf voxels"),
    ("Inf", "Inf.nii.gz", "NaN or Inf voxels"),
    ("constant", "constant.nii.gz", "constant"),
    ("huge-header", "huge.nii", "more than 2^30"),
    ("mask-10mm-off", "mask_off.nii.gz", "different affine"),
    ("mask-shape", "mask_shape.nii.gz", "has shape (8, 16, 16) but its image has (16, 16, 16)"),
]


def _setup(phantoms: Path, tmp_path: Path, kind: str | None, cache: str = "memory") -> tuple[Path, Path]:
    """A manifest with ``kind`` planted in CSV row BAD_ROW, and a config over it; returns (config, run)."""
    frame = pd.read_csv(phantoms)
    base = phantoms.parent
    for column in ("image", "mask"):
        frame[column] = [str(base / p) for p in frame[column]]
    frame["split"] = SPLITS
    if kind == "duplicate":
        frame.loc[BAD_ROW - 2, "subject"] = frame.loc[0, "subject"]
    elif kind is not None:
        for column, value in _make_bad(kind, Path(frame.loc[BAD_ROW - 2, "image"]),
                                       Path(frame.loc[BAD_ROW - 2, "mask"]), tmp_path).items():
            frame.loc[BAD_ROW - 2, column] = value
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": "vqvae3d",
        "data": {"manifest": str(manifest), "spatial_size": [16, 16, 16], "cache": cache, "mask_image": True},
        "net": {"channels": [8], "embedding_dim": 4, "num_codes": 16, "num_res_units": 1},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0, "num_workers": 0, "preview": False},
    }))
    return config, tmp_path / "run"


@pytest.mark.parametrize("kind, file, words", CASES, ids=[c[0] for c in CASES])
def test_train_refuses_bad_scans_naming_row_and_file_and_writes_nothing(phantoms: Path, tmp_path: Path, capsys,
                                                                         kind: str, file: str, words: str) -> None:
    config, run = _setup(phantoms, tmp_path, kind)
    assert main(["train", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"row {BAD_ROW} (subject phantom_002)" in err, err
    assert file in err and words in err, err
    assert "Traceback" not in err
    assert not run.exists(), sorted(p.name for p in run.rglob("*"))



def test_train_refuses_duplicate_subjects(phantoms: Path, tmp_path: Path, capsys) -> None:
    config, run = _setup(phantoms, tmp_path, "duplicate")
    assert main(["train", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"rows 2, {BAD_ROW}: duplicate subject 'phantom_000'" in err and "manifest.csv" in err, err
    assert not run.exists()


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_every_cache_mode_refuses_every_bad_row_of_both_splits(phantoms: Path, tmp_path: Path, capsys,
                                                               cache: str) -> None:
    config, run = _setup(phantoms, tmp_path, "NaN", cache=cache)
    manifest = tmp_path / "manifest.csv"
    frame = pd.read_csv(manifest)
    frame.loc[5, "image"] = str(tmp_path / "also_gone.nii.gz")  # CSV row 7, a val scan
    frame.to_csv(manifest, index=False)
    assert main(["train", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"row {BAD_ROW} (subject phantom_002): image {tmp_path / 'NaN.nii.gz'} contains NaN" in err, err
    assert "row 7 (subject phantom_005): image" in err and "also_gone.nii.gz not found" in err, err
    assert not run.exists()



def test_a_refused_train_into_an_existing_folder_leaves_it_as_it_was(phantoms: Path, tmp_path: Path, capsys) -> None:
    config, run = _setup(phantoms, tmp_path, "NaN", cache="disk")
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert main(["train", str(config), "--out", str(run)]) == 2
    assert "contains NaN" in capsys.readouterr().err
    assert sorted(p.name for p in run.rglob("*")) == ["notes.txt"]  # the disk cache it started is gone too

def test_clean_data_trains(phantoms: Path, tmp_path: Path) -> None:
    # the same set-up without a bad row trains: the refusals above are about the planted file
    config, run = _setup(phantoms, tmp_path, None)
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert (run / "checkpoints" / "last.pt").is_file()


def test_data_check_refuses_a_huge_header_without_allocating(tmp_path: Path, capsys) -> None:
    huge = _header_only(tmp_path / "huge.nii", (10000, 10000, 10000))
    pd.DataFrame({"subject": ["a"], "image": [str(huge)]}).to_csv(tmp_path / "m.csv", index=False)
    assert main(["data", "check", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err + capsys.readouterr().out
    assert "row 2 (subject a): image" in err and "huge.nii" in err and "more than 2^30" in err
    assert "MemoryError" not in err
