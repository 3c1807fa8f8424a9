"""Outputs never overwrite an input, never replace a file without --overwrite, never collide; a bad manifest row
stops a command before its first output."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medlatent.commands.cli import main
from medlatent.commands.inputs import output_names
from medlatent.errors import InputError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def scan(phantom_manifest, tmp_path) -> Path:
    source = phantom_manifest.parent / pd.read_csv(phantom_manifest)["image"][0]
    return Path(shutil.copy(source, tmp_path / "scan.nii.gz"))


def test_reconstruct_refuses_to_write_over_its_input(trained_run, scan, capsys):
    before = _digest(scan)
    assert main(["reconstruct", str(trained_run), str(scan), str(scan)]) == 2
    assert "refusing to write over an input" in capsys.readouterr().err
    assert main(["reconstruct", str(trained_run), str(scan), str(scan), "--overwrite"]) == 2  # not even then
    assert _digest(scan) == before


def test_an_existing_output_needs_overwrite(trained_run, scan, tmp_path, capsys):
    out = tmp_path / "r.nii.gz"
    assert main(["reconstruct", str(trained_run), str(scan), str(out)]) == 0
    first = _digest(out)
    out.write_bytes(b"mine")
    assert main(["reconstruct", str(trained_run), str(scan), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["reconstruct", str(trained_run), str(scan), str(out), "--overwrite"]) == 0
    assert _digest(out) == first


@pytest.mark.parametrize("argv, message", [
    (["reconstruct", "{run}", "{scan}", "{tmp}/r.png"], "must end in .nii or .nii.gz"),
    (["attention", "{run}", "{scan}", "--class", "-o", "{file}"], "is an existing file; give a folder"),
    (["traverse", "{run}", "{scan}", "--attribute", "cavity_volume_mm3", "-o", "{file}"], "is an existing file"),
    (["interpolate", "{run}", "{scan}", "{scan}", "-o", "{file}"], "is an existing file"),
], ids=["recon-png", "attention-file", "traverse-file", "interpolate-file"])
def test_an_output_that_cannot_be_written_is_named_before_any_work(trained_run, scan, tmp_path, capsys, argv, message):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    args = [a.format(run=trained_run, scan=scan, tmp=tmp_path, file=existing) for a in argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert existing.read_text() == "keep me" and not (tmp_path / "r.png").exists()


def test_subject_ids_map_to_unique_safe_names():
    assert output_names(["a", "b/c", "../d"]) == {"a": "a", "b/c": "b_c", "../d": "d"}
    with pytest.raises(InputError, match="'a/b' and 'a_b'"):
        output_names(["a/b", "a_b"])
    with pytest.raises(InputError, match="'.' and '..'"):
        output_names([".", ".."])


def _manifest(phantom_manifest: Path, tmp_path: Path, subjects: list[str]) -> Path:
    frame = pd.read_csv(phantom_manifest).head(len(subjects))
    frame["image"] = [str(phantom_manifest.parent / p) for p in frame["image"]]
    frame["subject"] = subjects
    path = tmp_path / "m.csv"
    frame.drop(columns=["mask"]).to_csv(path, index=False)
    return path


def test_colliding_subject_names_are_an_error_and_nothing_is_written(trained_run, phantom_manifest, tmp_path, capsys):
    manifest = _manifest(phantom_manifest, tmp_path, ["a/b", "a_b", "c"])
    out = tmp_path / "att"
    assert main(["attention", str(trained_run), "--manifest", str(manifest), "--class", "-o", str(out)]) == 2
    assert "'a/b' and 'a_b'" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_row_stops_a_manifest_command_before_its_first_output(trained_run, phantom_manifest, tmp_path, capsys):
    manifest = _manifest(phantom_manifest, tmp_path, ["s1", "s2", "s3", "s4", "s5"])
    frame = pd.read_csv(manifest)
    frame.loc[3, "image"] = str(tmp_path / "missing.nii.gz")  # the 4th data row: row 5 with the header as row 1
    frame.to_csv(manifest, index=False)
    out = tmp_path / "att"
    assert main(["attention", str(trained_run), "--manifest", str(manifest), "--class", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 5 (subject s4)" in err and "missing.nii.gz" in err
    assert not out.exists()
    assert main(["data", "check", str(manifest)]) == 2
    assert "row 5 (subject s4)" in capsys.readouterr().err  # counted the same way everywhere
    assert main(["encode", str(trained_run), str(manifest), "-o", str(tmp_path / "f.csv"),
                 "--codes", str(tmp_path / "codes")]) == 2
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "codes").exists()
