"""``medlatent data ...``: exit 2 and nothing written on bad input; the happy paths write their files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medlatent.commands.cli import main


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_manifest_bad_glob_and_table(tmp_path: Path, ixi_dir: Path, capsys) -> None:
    out = tmp_path / "out" / "m.csv"
    assert main(["data", "manifest", "--images", str(tmp_path / "*.nii.gz"), "-o", str(out)]) == 2
    assert main(["data", "manifest", "--images", str(ixi_dir / "T1" / "*.nii.gz"), "--table",
                 str(ixi_dir / "participants.csv"), "--id-column", "ID", "-o", str(out)]) == 2
    assert "id column 'ID' not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_manifest_ixi(tmp_path: Path, ixi_dir: Path) -> None:
    out = tmp_path / "m.csv"
    assert main(["data", "manifest", "--images", str(ixi_dir / "T1" / "*.nii.gz"), "--table",
                 str(ixi_dir / "participants.csv"), "--id-column", "MRID", "-o", str(out)]) == 0
    assert len(pd.read_csv(out)) == 181


def test_check_exit_codes(tmp_path: Path, ixi_dir: Path, capsys) -> None:
    good = tmp_path / "good.csv"
    pd.DataFrame({"subject": ["a"], "image": [str(ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz")]}).to_csv(good, index=False)
    assert main(["data", "check", str(good)]) == 0
    assert "120x120x90" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"subject": ["a"], "image": [str(tmp_path / "gone.nii.gz")]}).to_csv(bad, index=False)
    before = _listing(tmp_path)
    assert main(["data", "check", str(bad)]) == 2
    assert "row 2 (subject a)" in capsys.readouterr().err and _listing(tmp_path) == before


def test_attributes_bad_labels_write_nothing(tmp_path: Path, ixi_dir: Path, capsys) -> None:
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"subject": ["IXI012-HH-1211"], "image": [str(ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz")],
                  "mask": [str(ixi_dir / "dlmuse_seg" / "IXI012-HH-1211_T1_DLMUSE.nii.gz")]}).to_csv(manifest, index=False)
    out = tmp_path / "attrs" / "a.csv"
    assert main(["data", "attributes", str(manifest), "--labels", "ventricles=51;52", "-o", str(out)]) == 2
    assert "ventricles=51;52" in capsys.readouterr().err and not out.parent.exists()
    assert main(["data", "attributes", str(manifest), "--labels", "ventricles=51,52", "-o", str(out)]) == 0
    assert pd.read_csv(out)["ventricles_volume_mm3"].iloc[0] > 0


def test_from_medmnist_bad_npz_writes_nothing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((1, 4, 4, 4), np.uint8))
    assert main(["data", "from-medmnist", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "bad.npz" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["data", "from-medmnist", str(tmp_path / "none.npz"), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["data", "check"], ["data", "attributes", "m.csv", "-o", "x.csv"]])
def test_missing_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
