"""Atomic writes leave nothing half-written; subject IDs never escape their folder."""

from __future__ import annotations

import pytest

from medlatent.io import atomic_path, child_path, safe_name


def test_atomic_path_removes_the_temporary_file_on_error(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_suffix_and_renames(tmp_path):
    target = tmp_path / "sub" / "map.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
        tmp.write_text("x")
    assert target.read_text() == "x"
    assert [p.name for p in target.parent.iterdir()] == ["map.nii.gz"]


@pytest.mark.parametrize("subject", ["../x", "../../etc/passwd", "/abs/path", "a b\tc", "..", "", "sub/../../y", "IXI012-HH-1211"])
def test_child_path_stays_inside_the_folder(tmp_path, subject):
    path = child_path(tmp_path, subject, ".nii.gz")
    assert path.parent == tmp_path.resolve()
    assert "/" not in safe_name(subject) and not safe_name(subject).startswith(".")


def test_safe_name_keeps_ordinary_ids():
    assert safe_name("IXI012-HH-1211") == "IXI012-HH-1211"
