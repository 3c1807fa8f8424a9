"""SSIM before and after the switch to the standard 11-voxel window, on real IXI T1 volumes.

Old: MONAI ``SSIMMetric`` with a 7-voxel Gaussian window (sigma 1.5) and the data range of the
batch, as medlatent/metrics.py computed it until this change. New: ``medlatent.metrics.ssim``
(11-voxel window, sigma 1.5, K1 0.01, K2 0.03, data range per volume). Reference:
scikit-image's ``structural_similarity`` in the Wang et al. setting (if installed).

Each volume is scaled by its 99.5th percentile, then compared with a noisy (Gaussian, std 0.05),
blurred (Gaussian, sigma 1 voxel) and shifted (1.5, 0, -1 voxels, linear) copy of itself.

    python benchmarks/ssim_window.py [--subjects 4] [--json bench_out/ssim_window.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import SSIMMetric
from scipy.ndimage import gaussian_filter, shift

from medlatent.metrics import ssim

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi_t1_2mm" / "T1"


def _degraded(volume: np.ndarray, kind: str) -> np.ndarray:
    if kind == "noise":
        return volume + np.random.default_rng(0).normal(0, 0.05, volume.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_filter(volume, 1.0)
    return shift(volume, (1.5, 0.0, -1.0), order=1)


def _old(prediction: torch.Tensor, target: torch.Tensor) -> float:
    data_range = float(target.max() - target.min()) or 1.0
    return float(SSIMMetric(spatial_dims=3, data_range=data_range, win_size=7, reduction="none")(prediction, target))


def _skimage(prediction: np.ndarray, target: np.ndarray) -> float | None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    return float(structural_similarity(target, prediction, data_range=float(target.max() - target.min()),
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4, help="how many IXI T1 volumes (sorted by name)")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args()
    rows = []
    for path in sorted(DATA.glob("*.nii.gz"))[: args.subjects]:
        target = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        target = target / np.percentile(target, 99.5)
        for kind in ("noise", "blur", "shift"):
            prediction = _degraded(target, kind).astype(np.float32)
            p, t = torch.from_numpy(prediction)[None, None], torch.from_numpy(target)[None, None]
            old, new = _old(p, t), float(ssim(p, t)[0])
            rows.append({"subject": path.name.split("_")[0], "degradation": kind, "ssim_7voxel_old": old,
                         "ssim_11voxel_new": new, "new_minus_old": new - old,
                         "skimage_wang": _skimage(prediction, target)})
    print("| subject | degradation | SSIM 7-voxel (old) | SSIM 11-voxel (new) | new - old | scikit-image |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        ref = "n/a" if r["skimage_wang"] is None else f"{r['skimage_wang']:.4f}"
        print(f"| {r['subject']} | {r['degradation']} | {r['ssim_7voxel_old']:.4f} | {r['ssim_11voxel_new']:.4f} | "
              f"{r['new_minus_old']:+.4f} | {ref} |")
    print(f"CPU: {platform.processor() or platform.machine()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
