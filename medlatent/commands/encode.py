"""``medlatent encode``: one row of pooled latent features per scan of a manifest (and, optionally, each scan's codes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medlatent.commands.inputs import as_batch, iter_manifest, manifest_subjects, output_names
from medlatent.commands.outputs import check_output_folder, check_outputs
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.io import atomic_path, write_text_atomic

__all__ = ["encode", "encode_features"]


def _rows(state: LoadedRun, manifest: str | Path, codes_dir: Path | None = None) -> pd.DataFrame:
    names = output_names(manifest_subjects(manifest, state.data_cfg)) if codes_dir is not None else {}
    rows = []
    for subject, _, item in iter_manifest(manifest, state.data_cfg):
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
    state = load_run(run, "encode")
    if codes_dir is not None:
        names = output_names(manifest_subjects(manifest, state.data_cfg))
        suffixes = state.family.features(state.model, _probe_input(state))[1].keys()
        check_output_folder(codes_dir, [f"{n}{s}.npy" for n in names.values() for s in suffixes], [manifest],
                            overwrite, option="--codes")
    frame = _rows(state, manifest, Path(codes_dir) if codes_dir is not None else None)
    write_text_atomic(output, frame.to_csv(index=False))
    print(f"wrote {output}: {len(frame)} subjects x {frame.shape[1] - 1} features")
    return frame


def _probe_input(state: LoadedRun):
    """A zero volume of the run's input size: enough to learn which arrays ``features`` returns."""
    import torch

    return torch.zeros(1, 1, *state.data_cfg["spatial_size"], device=state.device)
