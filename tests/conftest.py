"""Shared test fixtures: where the real data lives (``../shared/data``, or ``$MEDLATENT_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _data_root() -> Path:
    return Path(os.environ.get("MEDLATENT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder. Real-data tests are part of the suite: a missing folder fails them."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"real data not found at {root}: put ../shared/data beside the repository or set MEDLATENT_DATA")
    return root


@pytest.fixture(scope="session")
def ixi_dir(data_dir: Path) -> Path:
    return data_dir / "ixi_t1_2mm"


@pytest.fixture(scope="session")
def emidec_dir(data_dir: Path) -> Path:
    """EMIDEC: images/, labels/ (0 background, 1 LV cavity, 2 myocardium, 3 infarct, 4 no-reflow), clinical.csv."""
    return data_dir / "emidec"


@pytest.fixture(scope="session")
def ixi_t1(ixi_dir: Path) -> Path:
    """A real IXI T1 stored in P,S,R order (not RAS): outputs must come back on its grid."""
    return ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz"


@pytest.fixture(scope="session")
def ixi_brain(ixi_dir: Path) -> Path:
    """The DLMUSE label map of :func:`ixi_t1` (> 0 is the brain)."""
    return ixi_dir / "dlmuse_seg" / "IXI012-HH-1211_T1_DLMUSE.nii.gz"


@pytest.fixture(scope="session")
def ct_pitch(data_dir: Path) -> Path:
    """A real head CT with an oblique affine."""
    return data_dir / "ct_samples" / "CT_pitch.nii.gz"


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_subjects=40, shape=(32, 32, 32), seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, phantom_manifest) -> Path:
    """One tiny Attri-VAE trained on 32^3 phantoms, shared by every test that needs a run.

    Cavity volume and wall thickness regularised, intensity carried but not regularised, label = lesion.
    """
    from medlatent.commands.registry import resolve
    from medlatent.commands.train import train

    cfg = resolve({
        "model": "attrivae",
        "data": {"manifest": str(phantom_manifest), "spatial_size": [32, 32, 32], "split": {"val": 0.2, "test": 0.2, "seed": 0},
                 "attributes": ["cavity_volume_mm3", "wall_thickness_mm", "intensity"], "label": "label"},
        # the classifier reads mu: on 24 training phantoms the sampling noise of z drowns the lesion
        "net": {"channels": [8, 16, 32], "bottleneck_channels": 8, "latent_dim": 16, "classifier_input": "mu"},
        "loss": {"regularized": ["cavity_volume_mm3", "wall_thickness_mm"], "alpha": 200.0},
        "train": {"epochs": 12, "batch_size": 8, "lr": 2.0e-3, "seed": 0, "preview": False},
    })
    return train(cfg, tmp_path_factory.mktemp("runs") / "attrivae")
