"""``medlatent encode``: one row of pooled latent features per scan of a manifest (and, optionally, each scan's codes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medlatent.commands.inputs import as_batch, iter_manifest, manifest_subjects, output_names
from medlatent.commands.outputs import check_outputs
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.errors import InputError
from medlatent.io import atomic_path, write_text_atomic

__all__ = ["encode", "encode_features"]


def _rows(state: LoadedRun, manifest: str | Path, codes_dir: Path | None = None) -> pd.DataFrame:
    names = output_names(manifest_subjects(manifest, state.data_cfg)) if codes_dir is not None else {}
    rows = []
    for subject, _, item in iter_manifest(manifest, state.data_cfg, state.fingerprint):
        with state.inference():
            columns, arrays = state.family.features(state.model, as_batch(item, state.device))
        rows.append({"subject": subject, **columns})
        if codes_dir is not None:
            codes_dir.mkdir(parents=True, exist_ok=True)
            for suffix, array in arrays.items():
                with atomic_path(codes_dir / f"{names[subject]}{suffix}.npy", suffix=".npy") as tmp:
                    np.save(tmp, array)
    return pd.DataFrame(rows)


def encode_features(run: str | Path, manifest: str | Path) -> pd.DataFrame:
    """One row per scan of ``manifest``: ``subject`` then the family's feature columns
    (VQ-VAE: pooled pre/post-quantization features and code usage; Attri-VAE: ``mu_0 ..``)."""
    return _rows(load_run(run, "encode"), manifest)


def encode(run: str | Path, manifest: str | Path, output: str | Path, codes_dir: str | Path | None = None,
           overwrite: bool = False) -> pd.DataFrame:
    """Write :func:`encode_features` to ``output`` (CSV); with ``codes_dir`` also each scan's latent arrays
    as ``<subject><suffix>.npy`` (VQ-VAE code grids, ``_top``/``_bottom`` for two levels; Attri-VAE ``mu``)."""
    check_outputs([output], [manifest], overwrite, option="-o")
    if codes_dir is not None:
        codes_dir = Path(codes_dir)
        if codes_dir.exists() and (not codes_dir.is_dir() or (any(codes_dir.iterdir()) and not overwrite)):
            raise InputError(f"--codes {codes_dir}: must be a new or empty folder (or pass --overwrite)")
    state = load_run(run, "encode")
    frame = _rows(state, manifest, codes_dir)
    write_text_atomic(output, frame.to_csv(index=False))
    print(f"wrote {output}: {len(frame)} subjects x {frame.shape[1] - 1} features")
    return frame

