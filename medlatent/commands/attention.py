"""``medlatent attention``: an Attri-VAE's attention maps as NIfTI over the original scan, plus a PNG per map."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data.utils import affine_to_spacing

from medlatent.attrivae.attention import METHOD_NAMES, MapSettings, attention_map, resolve_layer, with_defaults
from medlatent.attrivae.attributes import AttributeMap
from medlatent.commands.inputs import as_batch, iter_manifest, load_input, manifest_subjects, output_names
from medlatent.commands.outputs import check_output_folder, write_volume
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.errors import InputError
from medlatent.figures import save_overlay
from medlatent.io import safe_name, write_text_atomic

__all__ = ["attention", "item_spacing", "item_body"]


def _ras(volume: Any) -> tuple[np.ndarray, np.ndarray]:
    """A path or MetaTensor ``[1, X, Y, Z]`` reoriented to RAS: ``([X, Y, Z], spacing mm [3])``."""
    from monai.transforms import Orientation

    from medlatent.transforms.pipeline import LoadVolumed

    if not hasattr(volume, "affine"):
        volume = LoadVolumed(["image"])({"image": volume})["image"]
    oriented = Orientation(axcodes="RAS", labels=tuple(zip("LPI", "RAS")))(volume)
    affine = np.asarray(oriented.affine, dtype=np.float64)
    return np.asarray(oriented.as_tensor()[0].float().numpy()), np.asarray(affine_to_spacing(affine, r=3))


def item_spacing(item: Mapping[str, Any]) -> tuple[float, float, float]:
    """Voxel size in mm of a preprocessed item's image (the model input grid), from its affine."""
    affine = np.asarray(getattr(item["image"], "affine", np.eye(4)), dtype=np.float64)
    return tuple(float(v) for v in affine_to_spacing(affine, r=3))


def item_body(item: Mapping[str, Any], device: torch.device) -> torch.Tensor | None:
    """The preprocessed item's mask (> 0) as ``[1, 1, D, H, W]``, or None without one."""
    if "mask" not in item:
        return None
    mask = item["mask"]
    return ((mask.as_tensor() if hasattr(mask, "as_tensor") else mask) > 0)[None].to(device)


def _file_names(label: str, evidence: str) -> tuple[str, str]:
    stem = f"attention_{label}" + ("" if evidence == "positive" else f"_{evidence}")
    return f"{stem}.nii.gz", f"{stem}.png"


def _one(state: LoadedRun, item: Mapping[str, Any], source: Any, label: str, folder: Path, settings: MapSettings,
         dim: int | None) -> dict[str, Any]:
    """Attention map of one scan -> ``folder/attention_<label>.nii.gz`` (input geometry) and ``.png``; returns an index row."""
    x = as_batch(item, state.device)
    cam = attention_map(state.model, x, dim, settings, spacing=item_spacing(item), body=item_body(item, state.device))
    cam = cam[0].cpu()
    method, evidence, layer = settings.method, settings.evidence, settings.layer if settings.uses_layer else "input"
    nifti_name, png_name = _file_names(label, evidence)
    folder.mkdir(parents=True, exist_ok=True)
    mapped = write_volume(cam, item, state.data_cfg, folder / nifti_name, value_range=(0.0, 1.0))
    array = mapped.as_tensor()[0].numpy()
    peak = np.unravel_index(int(np.argmax(array)), array.shape)
    affine = np.asarray(mapped.affine, dtype=np.float64)
    peak_mm = affine[:3, :3] @ np.asarray(peak, dtype=np.float64) + affine[:3, 3]
    scan_ras, spacing = _ras(source if source else item["image"])
    map_ras, _ = _ras(mapped)
    save_overlay(scan_ras, map_ras, folder / png_name, spacing=spacing, label=f"{METHOD_NAMES[method]}, {evidence} ({label})",
                 title=f"{item.get('subject', '')}: {settings.describe()} for {label}; peak at "
                       f"({peak_mm[0]:.0f}, {peak_mm[1]:.0f}, {peak_mm[2]:.0f}) mm RAS")
    row = {"subject": item.get("subject", ""), "target": label, "method": method, "evidence": evidence, "layer": layer,
           "baseline": settings.baseline if method in ("integrated_gradients", "occlusion") else "",
           "nifti": str(folder / nifti_name), "png": str(folder / png_name),
           "peak_voxel": " ".join(map(str, peak)), "peak_ras_mm": " ".join(f"{v:.1f}" for v in peak_mm)}
    if state.model.classifier is not None:
        with state.inference():
            logits = state.model.classify(state.model.encode(x)[0]).float()
        probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1).amax(1)
        row["probability"] = float(probs[0])
    return row


def attention(run: str | Path, input: str | Path | None = None, manifest: str | Path | None = None,  # noqa: A002
              attribute: str | None = None, use_class: bool = False, layer: str | None = None,
              out: str | Path = "attention", method: str | None = None, mask: str | Path | None = None,
              evidence: str | None = None, baseline: str | None = None, patch_mm: float | None = None,
              overwrite: bool = False) -> Path:
    """Attention maps as NIfTI over the original scan, plus a PNG per map.

    ``method`` (``attrivae.attention.METHODS``; default: the run's ``net.attention_method``, else
    the library default), ``evidence`` (``positive``: where the input raises the target;
    ``negative``: where it lowers it; ``absolute``: both; files of the last two get a
    ``_negative`` / ``_absolute`` suffix), ``baseline`` and ``patch_mm`` (integrated gradients,
    occlusion): see ``attrivae.attention.MapSettings``; ``layer``: an encoder layer name (default:
    ``net.attention_layer``, else ``attrivae.attention.default_layer``: the encoder stem).
    ``mask``: the ``input``'s mask, needed when the run was trained with ``data.mask_image`` (a
    manifest gives them in its ``mask`` column).

    One ``input`` -> ``OUT/attention_<target>.nii.gz`` and ``.png``. With ``manifest`` ->
    ``OUT/<subject>/...`` per scan and ``OUT/index.csv``: the manifest is checked whole first,
    then scans are processed one at a time, so memory does not grow with the number of subjects.
    """
    if (input is None) == (manifest is None):
        raise InputError("attention: give exactly one of INPUT or --manifest M")
    if (attribute is None) == (not use_class):
        raise InputError("attention: give exactly one of --attribute NAME or --class")
    state = load_run(run, "attention")
    if use_class and state.model.classifier is None:
        regularized = AttributeMap.load(state.run).regularized
        raise InputError(f"{run}: --class: this run was trained without data.label, so it has no classifier; "
                         f"use --attribute with one of: {', '.join(regularized) or 'none'}")
    dim = AttributeMap.load(state.run).dim_of(attribute) if attribute is not None else None
    layer_name, _ = resolve_layer(state.model, layer or state.cfg["net"]["attention_layer"])
    settings = with_defaults(MapSettings(layer=layer_name), method=method or state.cfg["net"].get("attention_method"),
                             evidence=evidence, baseline=baseline, patch_mm=patch_mm)
    label = safe_name("class" if use_class else attribute)
    files = _file_names(label, settings.evidence)
    if input is not None:
        out = check_output_folder(out, files, [input, mask], overwrite)
        row = _one(state, load_input(state, input, mask), str(input), label, out, settings, dim)
        print(f"wrote {row['nifti']} and {row['png']}")
        return out
    names = output_names(manifest_subjects(manifest, state.data_cfg))
    out = check_output_folder(out, ["index.csv"] + [f"{name}/{f}" for name in names.values() for f in files],
                              [manifest], overwrite)
    rows = []
    for subject, source, item in iter_manifest(manifest, state.data_cfg, state.fingerprint):
        rows.append({"image": source, **_one(state, item, source, label, out / names[subject], settings, dim)})
    write_text_atomic(out / "index.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote attention maps of {len(rows)} subjects to {out} (index: {out / 'index.csv'})")
    return out
