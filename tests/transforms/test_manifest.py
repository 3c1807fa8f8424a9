"""transforms.manifest: reading, building (IXI images + tables) and writing manifests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medlatent.errors import InputError
from medlatent.transforms.manifest import build_manifest, read_manifest, subject_from_filename, write_manifest


def test_ixi_manifest_has_181_rows_with_demographics_and_masks(ixi_dir: Path) -> None:
    df = build_manifest(str(ixi_dir / "T1" / "*.nii.gz"), str(ixi_dir / "dlmuse_seg" / "*.nii.gz"),
                        [{"path": str(ixi_dir / "participants.csv"), "id_column": "MRID"}])
    assert len(df) == 181
    assert list(df.columns[:3]) == ["subject", "image", "mask"]
    row = df.set_index("subject").loc["IXI012-HH-1211"]
    assert row["image"].endswith("IXI012-HH-1211_T1.nii.gz") and Path(row["image"]).is_absolute()
    assert row["mask"].endswith("IXI012-HH-1211_T1_DLMUSE.nii.gz")
    assert row["Sex"] == "M" and row["Age"] == pytest.approx(38.78)
    assert df["mask"].notna().all() and df["subject"].is_unique


def test_table_columns_are_sums_and_unmatched_images_are_dropped(ixi_dir: Path, tmp_path: Path, caplog) -> None:
    roi = pd.read_csv(ixi_dir / "dlmuse_roi_volumes.csv", dtype={"MRID": str})
    subset = roi.head(5)
    subset.to_csv(tmp_path / "roi.csv", index=False)
    df = build_manifest(str(ixi_dir / "T1" / "*.nii.gz"),
                        tables=[{"path": str(tmp_path / "roi.csv"), "id_column": "MRID",
                                 "columns": {"ventricles": ["51", "52"], "hippocampus": ["47", "48"]}}])
    assert sorted(df["subject"]) == sorted(subset["MRID"])  # 176 images without a row dropped
    assert list(df.columns) == ["subject", "image", "ventricles", "hippocampus"]
    expected = subset.set_index("MRID")
    for _, row in df.iterrows():
        assert row["ventricles"] == pytest.approx(expected.at[row["subject"], "51"] + expected.at[row["subject"], "52"])
    assert "176 of 181 images have no row" in caplog.text


def test_id_prefix_must_end_at_a_separator(tmp_path: Path) -> None:
    for name in ("A1_T1.nii.gz", "A12_T1.nii.gz", "B.nii"):
        (tmp_path / name).write_bytes(b"")
    pd.DataFrame({"id": ["A1", "A12", "B"], "age": [1, 2, 3]}).to_csv(tmp_path / "t.csv", index=False)
    df = build_manifest(str(tmp_path / "*.nii*"), tables=[{"path": str(tmp_path / "t.csv"), "id_column": "id"}])
    got = dict(zip(df["subject"], df["image"].map(lambda p: Path(p).name)))
    assert got == {"A1": "A1_T1.nii.gz", "A12": "A12_T1.nii.gz", "B": "B.nii"}


def test_subject_from_filename_strips_image_suffixes() -> None:
    assert subject_from_filename("/x/IXI012-HH-1211_T1.nii.gz") == "IXI012-HH-1211_T1"
    assert subject_from_filename("a.b.mha") == "a.b"
    assert subject_from_filename("case.nrrd") == "case"


def test_read_manifest_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("subject,image,mask\n001,img/a.nii.gz,\n002,/abs/b.nii.gz,m/b.nii.gz\n")
    df = read_manifest(tmp_path / "sub" / "m.csv")
    assert df["subject"].tolist() == ["001", "002"]  # IDs stay strings, leading zeros kept
    assert df.at[0, "image"] == str(tmp_path / "sub" / "img" / "a.nii.gz")
    assert df.at[1, "image"] == "/abs/b.nii.gz"
    assert pd.isna(df.at[0, "mask"]) and df.at[1, "mask"] == str(tmp_path / "sub" / "m" / "b.nii.gz")


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("subject,mask\na,b\n", "missing required column 'image'"),
    ("image\na.nii\n", "missing required column 'subject'"),
    ("subject,image\n", "no rows"),
    ("subject,image\na,x.nii\nb,\n", "column 'image' is empty in rows 3"),
])
def test_read_manifest_errors_name_file_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=expected) as err:
        read_manifest(path)
    assert str(path) in str(err.value)


def test_build_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no files match"):
        build_manifest(str(tmp_path / "*.nii.gz"))
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "t.csv").write_text("ID,x\na,1\n")
    with pytest.raises(InputError, match="id column 'MRID' not found"):
        build_manifest(str(tmp_path / "*.nii.gz"), tables=[{"path": str(tmp_path / "t.csv"), "id_column": "MRID"}])


def test_write_manifest_is_atomic(tmp_path: Path) -> None:
    df = pd.DataFrame({"subject": ["a"], "image": ["/x.nii.gz"]})
    out = write_manifest(df, tmp_path / "new" / "m.csv")
    assert pd.read_csv(out).equals(df)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.csv"]  # no temporary file left

    class Broken(pd.DataFrame):
        def to_csv(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(Broken(df), out)
    assert pd.read_csv(out).equals(df) and sorted(p.name for p in out.parent.iterdir()) == ["m.csv"]
