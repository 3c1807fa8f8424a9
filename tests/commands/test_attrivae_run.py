"""Run-based commands on an Attri-VAE run: evaluate, encode, reconstruct, masked inputs, bad input."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.attrivae.attributes import AttributeMap
from medlatent.commands.cli import main


def test_run_saves_scaler_and_dim_map(trained_run):
    amap = AttributeMap.load(trained_run)
    assert amap.regularized == ["cavity_volume_mm3", "wall_thickness_mm"] and amap.dims == [0, 1]
    assert amap.names[2] == "intensity" and amap.classes == ["0", "1"]
    assert all(lo < hi for lo, hi in zip(amap.minimum, amap.maximum))



def test_evaluate_runs_in_fp32_on_a_cpu_whatever_auto_picks(trained_run, monkeypatch):
    # figures in eval/metrics.json must not depend on whether this CPU has native bf16
    import medlatent.commands.evaluate as evaluate_command
    from medlatent import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda *args, **kwargs: True)  # auto -> bf16 on any CPU
    used = []
    real = evaluate_command.run_evaluation

    def spy(task, model, loader, device, run_precision=None, **kwargs):
        used.append(run_precision)
        return real(task, model, loader, device, run_precision, **kwargs)

    monkeypatch.setattr(evaluate_command, "run_evaluation", spy)
    assert precision.resolve({"precision": "auto"}, "cpu").name == "bf16"
    assert main(["evaluate", str(trained_run), "--split", "test"]) == 0
    assert [p.name for p in used] == ["fp32"]

def test_evaluate_writes_every_metric(trained_run):
    assert main(["evaluate", str(trained_run), "--split", "test"]) == 0
    metrics = json.loads((trained_run / "eval" / "metrics.json").read_text())
    for key in ("mse", "ssim", "accuracy", "auc", "interpretability", "mig", "sap", "scc", "modularity"):
        assert key in metrics
    assert 0 <= metrics["ssim"] <= 1 and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["per_attribute"]) == {"cavity_volume_mm3", "wall_thickness_mm", "intensity"}
    per_subject = pd.read_csv(trained_run / "eval" / "per_subject.csv")
    assert len(per_subject) == metrics["n"] == 8
    assert {"subject", "mse", "ssim", "prob", "label", "z_cavity_volume_mm3"} <= set(per_subject.columns)
    tied = metrics["tied_spearman"]
    assert set(tied) == {"cavity_volume_mm3", "wall_thickness_mm"}
    expected = per_subject["cavity_volume_mm3"].corr(per_subject["z_cavity_volume_mm3"], method="spearman")
    assert tied["cavity_volume_mm3"] == pytest.approx(expected)


def test_encode_writes_mu_per_subject(trained_run, phantom_manifest, tmp_path):
    assert main(["encode", str(trained_run), str(phantom_manifest), "-o", str(tmp_path / "f.csv"),
                 "--codes", str(tmp_path / "codes")]) == 0
    features = pd.read_csv(tmp_path / "f.csv")
    assert len(features) == 40 and list(features.columns[:2]) == ["subject", "mu_0"] and features.shape[1] == 17
    assert np.load(tmp_path / "codes" / "phantom_000.npy").shape == (16,)
    # the regularised dim follows cavity volume across subjects
    truth = pd.read_csv(phantom_manifest).set_index("subject").loc[features["subject"], "cavity_volume_mm3"]
    assert abs(pd.Series(features["mu_0"].to_numpy()).corr(pd.Series(truth.to_numpy()), method="spearman")) > 0.5


def test_reconstruct_keeps_the_input_geometry(trained_run, tmp_path, ixi_t1):
    assert main(["reconstruct", str(trained_run), str(ixi_t1), str(tmp_path / "r.nii.gz")]) == 0
    out, ref = nib.load(tmp_path / "r.nii.gz"), nib.load(ixi_t1)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-4)


def test_a_run_trained_on_masked_scans_needs_the_mask_of_each_input(trained_run, tmp_path, capsys, ixi_t1, ixi_brain):
    # the same weights under a config that masks its images (data.mask_image): every scan-taking
    # command now needs the scan's mask, and the outputs still have the scan's own geometry
    import shutil

    import yaml

    run = tmp_path / "masked_run"
    shutil.copytree(trained_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["mask_image"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    brain = ixi_brain
    attention = ["attention", str(run), str(ixi_t1), "--attribute", "cavity_volume_mm3", "-o", str(tmp_path / "a")]
    assert main(attention) == 2
    assert "give the scan's mask (--mask" in capsys.readouterr().err
    assert main([*attention, "--mask", str(brain)]) == 0
    out, ref = nib.load(tmp_path / "a" / "attention_cavity_volume_mm3.nii.gz"), nib.load(ixi_t1)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-4)
    assert main(["interpolate", str(run), str(ixi_t1), str(ixi_t1), "--steps", "2", "--mask-a", str(brain),
                 "-o", str(tmp_path / "i")]) == 2
    assert "give the scan's mask (--mask" in capsys.readouterr().err
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"subject": ["s1"], "image": [str(ixi_t1)], "mask": [str(brain)]}).to_csv(manifest, index=False)
    assert main(["attention", str(run), "--manifest", str(manifest), "--class", "-o", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "s1" / "attention_class.nii.gz").is_file()


@pytest.mark.parametrize("argv, message", [
    (["traverse", "{run}", "{scan}", "--attribute", "age", "-o", "{tmp}"],
     "unknown attribute 'age'; regularized attributes in this run: cavity_volume_mm3, wall_thickness_mm"),
    (["traverse", "{run}", "{scan}", "--attribute", "intensity", "-o", "{tmp}"],
     "'intensity' is not regularized in this run"),
    (["attention", "{run}", "{scan}", "--attribute", "intensity", "-o", "{tmp}"],
     "regularized attributes: cavity_volume_mm3, wall_thickness_mm"),
    (["attention", "{run}", "{scan}", "--class", "--layer", "encoder.nope", "-o", "{tmp}"],
     "available: encoder.stem"),
    (["evaluate", "{run}", "--prior"], "'evaluate --prior' is not available for attrivae runs"),
    (["traverse", "{run}", "{scan}", "--attribute", "cavity_volume_mm3", "--steps", "1", "-o", "{tmp}"],
     "--steps must be at least 2"),
], ids=["unknown", "unregularized", "attention-unregularized", "bad-layer", "prior", "steps"])
def test_bad_input_exits_2_listing_what_is_available(trained_run, phantom_manifest, tmp_path, capsys, argv, message):
    scan = phantom_manifest.parent / pd.read_csv(phantom_manifest)["image"][0]
    args = [a.format(run=trained_run, scan=scan, tmp=tmp_path / "o") for a in argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def _other_family_run(tmp_path):
    run = tmp_path / "vq"
    run.mkdir()
    (run / "config.yaml").write_text("model: vqvae3d\n")
    return run


def test_cli_on_a_vqvae_run_exits_2(tmp_path, phantom_manifest, capsys):
    run = _other_family_run(tmp_path)
    code = main(["traverse", str(run), str(phantom_manifest), "--attribute", "x", "-o", str(tmp_path / "o")])
    assert code == 2 and "'traverse' is not available for vqvae3d runs; available: evaluate" in capsys.readouterr().err
