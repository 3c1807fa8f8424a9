"""transforms.check: every kind of bad input is reported with its row and file; good data passes."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.errors import InputError
from medlatent.transforms.check import check_manifest

SUBJECTS = ("IXI012-HH-1211", "IXI013-HH-1212")


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return str(path)


@pytest.fixture()
def good_rows(ixi_dir: Path, tmp_path: Path) -> list[dict]:
    rows = []
    for i, s in enumerate(SUBJECTS):
        rows.append({"subject": s, "image": shutil.copy(ixi_dir / "T1" / f"{s}_T1.nii.gz", tmp_path),
                     "mask": shutil.copy(ixi_dir / "dlmuse_seg" / f"{s}_T1_DLMUSE.nii.gz", tmp_path),
                     "label": "MF"[i], "age": 30.5 + i})
    return rows


def _check(tmp_path: Path, rows: list[dict]) -> tuple[list[str], str]:
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    report = check_manifest(path, attributes=["age"], label="label")
    return report.problems, report.summary


def test_good_manifest_passes_with_summary(good_rows: list[dict], tmp_path: Path) -> None:
    problems, summary = _check(tmp_path, good_rows)
    assert problems == []
    assert "120x120x90 x2" in summary and "PSR x2" in summary and "2x2x2 x2" in summary
    assert "M x1, F x1" in summary and "min 30.5" in summary and "max 31.5" in summary


def _bad_row(kind: str, good: dict, tmp: Path) -> dict:
    row = dict(good, subject="bad")
    shape, affine = nib.load(good["image"]).shape, nib.load(good["image"]).affine
    if kind == "missing file":
        row["image"] = str(tmp / "missing.nii.gz")
    elif kind == "truncated":
        data = Path(good["image"]).read_bytes()
        (tmp / "truncated.nii.gz").write_bytes(data[: len(data) // 2])  # header intact, voxels cut
        row["image"] = str(tmp / "truncated.nii.gz")
    elif kind == "4D":
        row["image"] = _nifti(tmp / "four_d.nii.gz", np.random.rand(8, 8, 8, 2).astype(np.float32))
        row.pop("mask")
    elif kind == "NaN":
        array = np.random.rand(*shape).astype(np.float32)
        array[3, 4, 5] = np.nan
        row["image"] = _nifti(tmp / "nan.nii.gz", array, affine)
    elif kind == "constant":
        row["image"] = _nifti(tmp / "constant.nii.gz", np.full(shape, 7, np.int16), affine)
    elif kind == "non-numeric attribute":
        row["age"] = "forty"
    elif kind == "mask shape":
        row["mask"] = _nifti(tmp / "mask_shape.nii.gz", np.zeros((60, 60, 45), np.uint8), affine)
    elif kind == "mask affine":
        row["mask"] = _nifti(tmp / "mask_affine.nii.gz", np.zeros(shape, np.uint8), np.eye(4))
    return row


@pytest.mark.parametrize("kind, file, expected", [
    ("missing file", "missing.nii.gz", "not found"),
    ("truncated", "truncated.nii.gz", "unreadable or truncated"),
    ("4D", "four_d.nii.gz", "expected a 3D volume"),
    ("NaN", "nan.nii.gz", "NaN or Inf"),
    ("constant", "constant.nii.gz", "constant"),
    ("non-numeric attribute", None, "attribute 'age' is missing or not a number ('forty')"),
    ("mask shape", "mask_shape.nii.gz", "has shape (60, 60, 45) but its image has (120, 120, 90)"),
    ("mask affine", "mask_affine.nii.gz", "different affine"),
])
def test_each_bad_input_is_reported_with_row_and_file(good_rows: list[dict], tmp_path: Path, kind: str,
                                                      file: str | None, expected: str) -> None:
    rows = [good_rows[0], _bad_row(kind, good_rows[1], tmp_path)]
    problems, _ = _check(tmp_path, rows)
    assert len(problems) == 1, problems
    assert problems[0].startswith("row 3 (subject bad)")  # CSV row 3: header, good row, bad row
    assert expected in problems[0]
    if file:
        assert file in problems[0]


def test_duplicate_subjects_name_both_rows(good_rows: list[dict], tmp_path: Path) -> None:
    rows = [good_rows[0], dict(good_rows[1], subject=good_rows[0]["subject"])]
    problems, _ = _check(tmp_path, rows)
    assert problems == [f"rows 2, 3: duplicate subject '{SUBJECTS[0]}'"]


def test_missing_attribute_column_and_label(good_rows: list[dict], tmp_path: Path) -> None:
    rows = [dict(good_rows[0], label=None), good_rows[1]]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    problems = check_manifest(path, attributes=["height"], label="label").problems
    assert any("column 'height' not found" in p for p in problems)
    assert any(p.startswith("row 2") and "label 'label' is missing" in p for p in problems)


def test_broken_csv_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("subject,path\na,b\n")
    with pytest.raises(InputError, match="m.csv.*'image'"):
        check_manifest(tmp_path / "m.csv")
