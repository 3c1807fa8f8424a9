"""``medlatent attention``: maps in the scan's geometry, one folder per subject, outputs that never collide."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.commands.attention import attention
from medlatent.commands.cli import main


@pytest.mark.parametrize("scan", ["ixi_t1", "ct_pitch"], ids=["ixi_PSR", "ct_oblique"])
@pytest.mark.parametrize("target", [{"use_class": True}, {"attribute": "wall_thickness_mm"}], ids=["class", "attribute"])
def test_attention_nifti_overlays_the_scan(trained_run, tmp_path, scan, target, request):
    scan = request.getfixturevalue(scan)
    out = attention(trained_run, scan, out=tmp_path, **target)
    name = "class" if "use_class" in target else target["attribute"]
    result = nib.load(out / f"attention_{name}.nii.gz")
    reference = nib.load(scan)
    assert result.shape == reference.shape
    assert np.allclose(result.affine, reference.affine, atol=1e-4)
    data = result.get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1 and data.max() > 0
    assert (out / f"attention_{name}.png").stat().st_size > 0


def test_manifest_mode_writes_a_folder_per_subject_and_an_index(trained_run, phantom_manifest, tmp_path):
    frame = pd.read_csv(phantom_manifest).head(3)
    frame["image"] = [str(phantom_manifest.parent / p) for p in frame["image"]]
    frame["subject"] = ["a/../../escape", "b", "c"]  # IDs never leave the output folder
    small = tmp_path / "m.csv"
    frame.drop(columns=["mask"]).to_csv(small, index=False)
    out = attention(trained_run, manifest=small, use_class=True, out=tmp_path / "att")
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 3
    for nifti in index["nifti"]:
        assert (tmp_path / "att") in Path(nifti).resolve().parents
        assert nib.load(nifti).shape == (32, 32, 32)


def test_negative_evidence_export_is_named_and_indexed(trained_run, phantom_manifest, tmp_path):
    frame = pd.read_csv(phantom_manifest).head(2)
    frame["image"] = [str(phantom_manifest.parent / p) for p in frame["image"]]
    small = tmp_path / "m.csv"
    frame.drop(columns=["mask"]).to_csv(small, index=False)
    out = tmp_path / "att"
    assert main(["attention", str(trained_run), "--manifest", str(small), "--attribute", "wall_thickness_mm",
                 "--evidence", "negative", "-o", str(out)]) == 0
    index = pd.read_csv(out / "index.csv")
    assert list(index["evidence"]) == ["negative", "negative"]
    for nifti, png in zip(index["nifti"], index["png"]):
        assert nifti.endswith("attention_wall_thickness_mm_negative.nii.gz") and png.endswith("_negative.png")
        data = nib.load(nifti).get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    with pytest.raises(SystemExit) as caught:  # argparse: a choice that does not exist
        main(["attention", str(trained_run), "--manifest", str(small), "--class", "--evidence", "both",
              "-o", str(tmp_path / "bad")])
    assert caught.value.code == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("options", [["--method", "occlusion", "--patch-mm", "16", "--evidence", "absolute"],
                                     ["--method", "integrated_gradients", "--baseline", "masked"],
                                     ["--method", "guided_gradcam", "--layer", "encoder.levels.0"]],
                         ids=["occlusion", "integrated_gradients", "guided_gradcam"])
def test_every_method_exports_a_map_in_the_scan_geometry(trained_run, phantom_manifest, tmp_path, options):
    scan = phantom_manifest.parent / pd.read_csv(phantom_manifest)["image"][0]
    out = tmp_path / "att"
    assert main(["attention", str(trained_run), str(scan), "--class", *options, "-o", str(out)]) == 0
    suffix = "_absolute" if "absolute" in options else ""
    result, reference = nib.load(out / f"attention_class{suffix}.nii.gz"), nib.load(scan)
    assert result.shape == reference.shape and np.allclose(result.affine, reference.affine, atol=1e-4)
    data = result.get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() == pytest.approx(1.0, abs=0.05)
