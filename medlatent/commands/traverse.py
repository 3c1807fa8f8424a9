"""``medlatent traverse`` and ``interpolate``: decode walks through an Attri-VAE's latent space, in the scan's geometry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medlatent.attrivae.attributes import AttributeMap
from medlatent.attrivae.traversal import (decode_latents, fit_calibration, interpolate_latents, step_labels,
                                          traverse_latents)
from medlatent.commands.inputs import as_batch, load_input
from medlatent.commands.outputs import check_output_folder, write_volume
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.engine import make_loader
from medlatent.errors import InputError
from medlatent.figures import save_slice_grid
from medlatent.io import write_text_atomic
from medlatent.runs import read_json, write_json

__all__ = ["traverse", "interpolate", "calibration"]


def _step_files(steps: int) -> list[str]:
    return [f"step_{i:02d}.nii.gz" for i in range(steps)] + ["grid.png", "steps.csv"]


def _check_steps(steps: int) -> None:
    if int(steps) < 2:
        raise InputError(f"--steps must be at least 2, got {steps}")


@torch.no_grad()
def _mu(state: LoadedRun, item: Mapping[str, Any]) -> torch.Tensor:
    return state.model.encode(as_batch(item, state.device))[0][0].cpu()


def calibration(state: LoadedRun) -> dict[str, dict[str, float]]:
    """Per regularised attribute, the linear map ``z_k -> attribute`` on the training split.

    Computed once per checkpoint (encoding the training split) and cached in
    ``RUN/eval/calibration.json``; ``{}`` when the training data cannot be read any more.
    """
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    cache = state.run / "eval" / "calibration.json"
    key = {"checkpoint": state.checkpoint, "epoch": state.epoch}
    if cache.is_file():
        saved = read_json(cache)
        if saved.get("key") == key:
            return saved["attributes"]
    try:
        records, _ = load_split_records(state.data_cfg)
    except InputError as err:
        print(f"note: traversal steps are labelled in latent units only ({err})")
        return {}
    data_cfg = {**state.data_cfg, "cache": "none"}  # one pass: nothing to cache
    mus, attrs = [], []
    with torch.no_grad():
        for batch in make_loader(make_dataset(records["train"], data_cfg, train=False), 4, 0):
            mus.append(state.model.encode(batch["image"].as_tensor().float().to(state.device))[0].cpu().numpy())
            attrs.append(batch["attrs"].float().numpy())
    mu_all, attr_all = np.concatenate(mus), np.concatenate(attrs)
    amap = AttributeMap.load(state.run)
    fits = {name: fit_calibration(mu_all[:, dim], attr_all[:, column])
            for name, dim, column in zip(amap.regularized, amap.dims, amap.columns)}
    write_json(cache, {"key": key, "attributes": fits})
    return fits


def _write_steps(state: LoadedRun, item: Mapping[str, Any], volumes: torch.Tensor, titles: Sequence[str],
                 out: Path, title: str) -> list[Path]:
    """Each ``[S, 1, D, H, W]`` step as NIfTI in the input's geometry, plus one PNG grid of mid-slices."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, volume in enumerate(volumes):
        path = out / f"step_{i:02d}.nii.gz"
        write_volume(volume, item, state.data_cfg, path)
        paths.append(path)
    save_slice_grid(list(volumes), list(titles), out / "grid.png", title=title, vmin=0.0,
                    vmax=1.0 if state.cfg["net"]["output"] == "sigmoid" else None)
    return paths


def traverse(run: str | Path, input: str | Path, attribute: str, steps: int = 9,  # noqa: A002 - the CLI's name
             value_range: Sequence[float] = (-3.0, 3.0), out: str | Path = "traversal",
             mask: str | Path | None = None, overwrite: bool = False) -> Path:
    """Set the attribute's latent dim to ``steps`` values in ``value_range`` and decode.

    Writes ``OUT/step_XX.nii.gz`` (input geometry), ``OUT/grid.png`` (steps x three mid-slices,
    each row labelled with the latent value and the attribute value it corresponds to on the
    training split: the linear fit clipped to the training range, so never a value no training
    scan had, such as a negative volume; clipped labels read "<=" or ">=") and ``OUT/steps.csv``
    (``clipped`` marks them). ``mask``: the scan's mask, needed when the run was
    trained with ``data.mask_image``.
    """
    _check_steps(steps)
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        raise InputError(f"--range: expected two different finite numbers, got {low} {high}")
    out = check_output_folder(out, _step_files(int(steps)), [input, mask], overwrite)
    state = load_run(run, "traverse")
    amap = AttributeMap.load(state.run)
    dim = amap.dim_of(attribute)
    item = load_input(state, input, mask)
    mu = _mu(state, item)
    values = torch.linspace(low, high, int(steps))
    volumes = decode_latents(state.model, traverse_latents(mu, dim, values))
    fit = calibration(state).get(attribute, {})
    column = amap.names.index(attribute)
    lowest, highest = amap.minimum[column], amap.maximum[column]
    labels, clipped = step_labels(values.tolist(), fit, lowest, highest)
    rows, titles = [], []
    for i, (value, estimate, edge) in enumerate(zip(values.tolist(), labels, clipped)):
        rows.append({"step": i, "z": value, attribute: estimate, "clipped": bool(edge), "file": f"step_{i:02d}.nii.gz"})
        sign = ("<=" if estimate <= lowest else ">=") if edge else "~"
        titles.append(f"z={value:+.2f}" + (f"\n{attribute}{sign}{estimate:.4g}" if math.isfinite(estimate) else ""))
    r2 = fit.get("r2") if fit else None
    note = f" (linear fit on train, R2 {r2:.2f})" if r2 is not None and math.isfinite(r2) else ""
    _write_steps(state, item, volumes, titles, out,
                 f"{Path(input).name}: latent dim {dim} = {attribute}{note}; subject's own z = {float(mu[dim]):+.2f}")
    write_text_atomic(out / "steps.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote {steps} steps of {attribute} (latent dim {dim}) to {out}")
    return out


def interpolate(run: str | Path, input_a: str | Path, input_b: str | Path, steps: int = 8,
                out: str | Path = "interpolation", masks: Sequence[str | Path | None] = (None, None),
                overwrite: bool = False) -> Path:
    """Decode ``steps`` points from ``mu_a`` to ``mu_b``, written in input A's geometry.

    ``masks``: the two scans' masks, needed when the run was trained with ``data.mask_image``.
    """
    _check_steps(steps)
    out = check_output_folder(out, _step_files(int(steps)), [input_a, input_b, *masks], overwrite)
    state = load_run(run, "interpolate")
    item_a, item_b = load_input(state, input_a, masks[0]), load_input(state, input_b, masks[1])
    volumes = decode_latents(state.model, interpolate_latents(_mu(state, item_a), _mu(state, item_b), int(steps)))
    t = np.linspace(0.0, 1.0, int(steps))
    _write_steps(state, item_a, volumes, [f"t={v:.2f}" for v in t], out,
                 f"{Path(input_a).name} (t=0) -> {Path(input_b).name} (t=1)")
    write_text_atomic(out / "steps.csv", pd.DataFrame({"step": range(len(t)), "t": t,
                                                       "file": _step_files(len(t))[:len(t)]}).to_csv(index=False))
    print(f"wrote {steps} interpolation steps to {out}")
    return out
