"""One tiny Attri-VAE trained on 32^3 phantoms, shared by every test that needs a run."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IXI_T1 = SHARED / "ixi_t1_2mm" / "T1" / "IXI012-HH-1211_T1.nii.gz"
CT_PITCH = SHARED / "ct_samples" / "CT_pitch.nii.gz"


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_subjects=40, shape=(32, 32, 32), seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, phantom_manifest) -> Path:
    """Cavity volume and wall thickness regularised, intensity carried but not regularised, label = lesion."""
    from medlatent.config import resolve
    from medlatent.train import train

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
