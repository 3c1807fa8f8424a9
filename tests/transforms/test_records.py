"""transforms.records: per-split records and DataInfo from manifests, globs and MedMNIST npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medlatent.errors import InputError
from medlatent.transforms.attributes import shape_statistics
from medlatent.transforms.records import load_split_records


@pytest.fixture()
def ixi_cfg(ixi_dir: Path) -> dict:
    return {"images": str(ixi_dir / "T1" / "*.nii.gz"), "masks": str(ixi_dir / "dlmuse_seg" / "*.nii.gz"),
            "tables": [{"path": str(ixi_dir / "participants.csv"), "id_column": "MRID"}],
            "attributes": ["Age"], "label": "Sex", "split": {"val": 0.1, "test": 0.1, "seed": 0}}


def test_ixi_glob_records(ixi_cfg: dict) -> None:
    records, info = load_split_records(ixi_cfg)
    assert info.classes == ["F", "M"] and info.attributes == ["Age"] and info.label == "Sex"
    assert info.counts == {"train": 145, "val": 18, "test": 18}
    everyone = [r for split in records.values() for r in split]
    assert len({r["subject"] for r in everyone}) == 181
    rec = next(r for r in everyone if r["subject"] == "IXI012-HH-1211")
    assert rec["label"] == 1 and rec["attrs"].dtype == np.float32 and rec["attrs"][0] == pytest.approx(38.78)
    assert rec["image"].endswith("IXI012-HH-1211_T1.nii.gz") and rec["mask"].endswith("_DLMUSE.nii.gz")
    # stratified: both sexes in every split, and the same split again with the same seed
    for split in records.values():
        assert {r["label"] for r in split} == {0, 1}
    again, _ = load_split_records(ixi_cfg)
    assert [r["subject"] for r in again["test"]] == [r["subject"] for r in records["test"]]


def test_unknown_attribute_lists_available(ixi_cfg: dict) -> None:
    with pytest.raises(InputError, match=r"\['age'\].*available: \['Age', 'Sex'\]"):
        load_split_records({**ixi_cfg, "attributes": ["age"]})
    with pytest.raises(InputError, match="data.label"):
        load_split_records({**ixi_cfg, "label": "sex"})


def _manifest(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("subject,image,label,age,split\n" + rows)
    return path


def test_bad_attribute_rows_are_named_or_dropped(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "a,a.nii,0,1.5,train\nb,b.nii,1,n/a,train\nc,c.nii,1,,test\nd,d.nii,0,3,val\n")
    with pytest.raises(InputError, match=r"row 3 \(subject b\), row 4 \(subject c\)"):
        load_split_records({"manifest": str(path), "attributes": ["age"]})
    records, info = load_split_records({"manifest": str(path), "attributes": ["age"], "drop_missing": True})
    assert info.counts == {"train": 1, "val": 1, "test": 0}  # the split column wins
    assert records["train"][0]["image"] == str(tmp_path / "a.nii")


def test_split_column_values_are_checked(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "a,a.nii,0,1,train\nb,b.nii,1,2,validation\n")
    with pytest.raises(InputError, match=r"split.*row 3 \(subject b\)"):
        load_split_records({"manifest": str(path)})


def test_numeric_labels_map_to_sorted_indices(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("subject,image,grade\n" + "".join(f"s{i},x.nii,{g}\n" for i, g in enumerate([10, 2, 2, 10, 3] * 4)))
    records, info = load_split_records({"manifest": str(path), "label": "grade", "split": {"val": 0, "test": 0}})
    assert info.classes == ["2", "3", "10"]
    assert [r["label"] for r in records["train"]][:5] == [2, 0, 0, 2, 1]


def test_npz_records_with_shape_attributes_cached(data_dir: Path, tmp_path: Path) -> None:
    npz = data_dir / "medmnist3d" / "adrenalmnist3d.npz"
    cfg = {"manifest": str(npz), "attributes": ["shape_volume_mm3", "shape_elongation", "shape_roundness"],
           "cache_dir": str(tmp_path)}
    records, info = load_split_records(cfg)
    assert info.counts == {"train": 1188, "val": 98, "test": 298} and info.classes == ["0", "1"]
    rec = records["val"][5]
    assert rec["image"].shape == (1, 28, 28, 28) and rec["image"].dtype == np.float32
    raw = np.load(npz)
    assert np.array_equal(rec["image"][0], raw["val_images"][5]) and rec["label"] == raw["val_labels"][5, 0]
    import SimpleITK as sitk

    expected = shape_statistics(sitk.GetImageFromArray((raw["val_images"][5] > 127).astype(np.uint8)), [1])
    assert rec["attrs"].tolist() == pytest.approx(
        [expected["volume_mm3"], expected["elongation"], expected["roundness"]], rel=1e-5)
    cached = list(tmp_path.glob("adrenalmnist3d-shape-*.csv"))
    assert len(cached) == 1 and len(pd.read_csv(cached[0])) == 1584
    again, _ = load_split_records(cfg)  # served from the CSV, same numbers
    assert np.array_equal(again["val"][5]["attrs"], rec["attrs"])
    with pytest.raises(InputError, match="shape_<stat>"):
        load_split_records({"manifest": str(npz), "attributes": ["volume"]})


def test_no_source_is_an_input_error() -> None:
    with pytest.raises(InputError, match="data.manifest"):
        load_split_records({})


def test_emidec_folds_from_data_split(emidec_dir: Path) -> None:
    # data.split {folds, fold}: fold k tested, a stratified val part from the other folds; over the
    # five folds every EMIDEC case is tested once
    cfg = {"images": str(emidec_dir / "images" / "*.nii.gz"), "masks": str(emidec_dir / "labels" / "*.nii.gz"),
           "tables": [{"path": str(emidec_dir / "clinical.csv"), "id_column": "subject"}], "label": "label"}
    tested = []
    for fold in range(5):
        records, info = load_split_records({**cfg, "split": {"folds": 5, "fold": fold, "val": 0.1, "seed": 0}})
        assert info.counts == {"train": 70, "val": 10, "test": 20}
        names = {split: {r["subject"] for r in rs} for split, rs in records.items()}
        assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
        assert sum(r["label"] for r in records["test"]) in (13, 14)  # 67 % infarction in each fold
        tested += names["test"]
    assert len(tested) == len(set(tested)) == 100
