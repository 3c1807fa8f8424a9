"""A non-editable install: the wheel carries the one namespace and the configs, and the demo runs from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_dot_then_demo_from_another_directory(tmp_path):
    target = tmp_path / "site"
    # a copy, so that the build's own files (build/, *.egg-info) stay out of the checkout
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "runs", "medlatent_demo", "bench_out"))
    # a real (non-editable) build into a folder of its own; the dependencies are the test
    # environment's, so nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path)
    installed = {p.name for p in (target / "medlatent").iterdir()}
    assert {"transforms", "vqvae3d", "attrivae", "configs", "commands"} <= installed
    assert (target / "medlatent" / "configs" / "vqvae3d_demo.yaml").is_file()
    # nothing generic at the top level for another distribution to shadow
    assert not (target / "transforms").exists() and not (target / "vqvae3d").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "MPLBACKEND": "Agg"}
    result = subprocess.run([str(target / "bin" / "medlatent"), "demo", "--quick", "--out", "demo"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Where to look" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import medlatent.commands.demo as d; print(d.CONFIGS)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(target)
    assert (elsewhere / "demo" / "attrivae" / "run" / "checkpoints" / "best.pt").is_file()
