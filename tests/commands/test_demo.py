"""``medlatent demo --quick``: the whole pipeline runs on phantoms and leaves every export behind."""

from __future__ import annotations

import json

import nibabel as nib

from medlatent.commands.cli import main


def test_demo_runs_both_families_and_writes_their_exports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "Where to look" in printed and str(out.resolve()) in printed
    assert (out / "phantoms" / "manifest.csv").is_file()
    assert (out / "data_check.txt").read_text().strip()
    for family in ("vqvae3d", "attrivae"):
        run = out / family / "run"
        assert (run / "checkpoints" / "best.pt").is_file(), family
        assert (run / "metrics.csv").is_file(), family
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert 0.0 < metrics["ssim"] <= 1.0, family
    reconstruction = nib.load(out / "vqvae3d" / "reconstruction.nii.gz")
    assert reconstruction.shape == (32, 32, 32)
    exported = list((out / "attrivae").rglob("*.nii.gz"))
    assert any("attention" in str(p) for p in exported), exported
    assert any("traverse" in str(p) or "travers" in str(p) for p in exported), exported
    for family in ("vqvae3d", "attrivae"):  # one MONAI bundle per family, and the command that runs it
        bundle = out / family / "bundle"
        for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts",
                     "docs/README.md", "LICENSE"):
            assert (bundle / name).is_file(), (family, name)
        assert f"--config_file {bundle.resolve() / 'configs' / 'inference.json'}" in printed
    pages = list((out / "attrivae" / "report").glob("*/report.html"))
    assert len(pages) == 1 and "Research use only" in pages[0].read_text()
    assert str(out / "attrivae" / "report" / "index.html") in printed
