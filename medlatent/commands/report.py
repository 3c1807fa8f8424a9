"""``medlatent report``: per subject one self-contained HTML page a clinician opens offline, and the maps beside it.

For each subject (one ``INPUT`` or every row of a manifest, one volume in memory at a time):
the default attention maps of the class and of each regularised attribute, each overlaid on the
scan in three planes through its peak; the peak in scanner millimetres and, with a label map and
its dictionary, the structure it falls in; the class probability; each regularised attribute as
encoded (and as measured, when the manifest has it) with its percentile in the training
population; a traversal strip per attribute. Beside the page: each map as float32 NIfTI on the
scan's grid, its top 5% of mass as a NIfTI label map, all of them as one 3D Slicer segmentation
(``.seg.nrrd``, named coloured segments), colour tables for Slicer and ITK-SNAP, and a text on
opening them. The HTML itself is built in :mod:`medlatent.commands.report_html`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy.stats import percentileofscore

from medlatent.attrivae.attention import MapSettings, attention_map, default_settings, resolve_layer, with_defaults
from medlatent.attrivae.attributes import AttributeMap
from medlatent.attrivae.traversal import decode_latents, step_labels, traverse_latents
from medlatent.attrivae.faithfulness import randomization_check
from medlatent.commands.attention import _ras, item_body, item_spacing
from medlatent.commands.inputs import as_batch, iter_manifest, load_input, manifest_subjects, output_names
from medlatent.commands.outputs import check_output_folder, write_volume
from medlatent.commands.report_html import index_page, opening_text, subject_page
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.commands.traverse import calibration
from medlatent.errors import InputError
from medlatent.figures import save_overlay, save_strip
from medlatent.io import atomic_path, safe_name, write_text_atomic
from medlatent.nifti import write_nifti

__all__ = ["report", "top_mass", "MapSpec", "TOP_MASS", "PALETTE"]

#: the share of a map's mass its label map keeps
TOP_MASS = 0.05
#: segment colours (RGB 0-255), one per map in the order the report lists them (matplotlib's tab10)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
STRIP_STEPS = 5
SUBJECT_FILES = ("report.html", "attention_top5.seg.nrrd", "attention_colours.ctbl", "attention_labels_itksnap.txt",
                 "OPENING.txt")


@dataclass(frozen=True)
class MapSpec:
    """One exported map: what it explains and how it is computed."""

    key: str                # file-name part: class, <attribute>[_negative]
    title: str              # e.g. "class (label)" or "cavity_volume_mm3, negative evidence"
    dim: int | None         # latent dim, or None for the classifier logit
    settings: MapSettings   # method, layer (resolved), evidence, baseline


def default_maps(state: LoadedRun, amap: AttributeMap) -> list[MapSpec]:
    """The maps a report exports: ``attrivae.attention.default_settings`` for the class (if the run has a
    classifier), then for each regularised attribute; the run's ``net.attention_method`` and
    ``net.attention_layer`` replace the defaults' when set."""
    layer, _ = resolve_layer(state.model, state.cfg["net"]["attention_layer"])
    method = state.cfg["net"].get("attention_method")
    targets = ([("class", f"class ({amap.label or 'label'})", None, "class")] if state.model.classifier is not None
               else []) + [(safe_name(n), n, d, "attribute") for n, d in zip(amap.regularized, amap.dims)]
    specs = []
    for key, title, dim, kind in targets:
        for settings in default_settings(kind):
            settings = with_defaults(settings, layer=layer, method=method)
            suffix = "" if settings.evidence == "positive" else f"_{settings.evidence}"
            specs.append(MapSpec(key + suffix, title + ("" if not suffix else f", {settings.evidence} evidence"), dim,
                                 settings))
    return specs


def sanity_check(state: LoadedRun, spec: MapSpec, item: Mapping[str, Any], ratio: float = 0.5) -> str:
    """The model-randomisation check (``attrivae.faithfulness.randomization_check``) of one map on one scan, in words.

    An attribute's map explains ``mu_k``, which the classifier does not compute: re-initialising the
    classifier leaves that map as it was, so that stage is not counted against it.
    """
    x = as_batch(item, state.device)
    spacing, body = item_spacing(item), item_body(item, state.device)
    result = randomization_check(lambda model, volume: attention_map(model, volume, spec.dim, spec.settings, spacing,
                                                                     body), state.model, x, ratio=ratio)
    stages = {k: v for k, v in result["stages"].items() if spec.dim is None or k != "classifier"}
    worst = max(stages.values())
    passed = worst < ratio * result["trained_rho"]
    verdict = "passed" if passed else "FAILED: the map barely depends on what the model learned"
    return (f"{verdict} on {item.get('subject', 'this scan')} (Spearman with maps of randomised models at most "
            f"{worst:.2f}, between two trained maps {result['trained_rho']:.2f})")


def _map_files(spec: MapSpec) -> list[str]:
    return [f"attention_{spec.key}.nii.gz", f"attention_{spec.key}_top5.nii.gz", f"attention_{spec.key}.png"]


def top_mass(values: np.ndarray, share: float = TOP_MASS) -> np.ndarray:
    """The smallest set of voxels, highest first, that holds ``share`` of a non-negative map's mass: bool, same shape.

    All False for an all-zero map.
    """
    flat = np.nan_to_num(np.asarray(values, dtype=np.float64).ravel(), nan=0.0).clip(min=0.0)
    total = flat.sum()
    keep = np.zeros(flat.shape, dtype=bool)
    if total <= 0:
        return keep.reshape(np.shape(values))
    order = np.argsort(flat)[::-1]
    count = int(np.searchsorted(np.cumsum(flat[order]), share * total) + 1)
    keep[order[:count]] = True
    return keep.reshape(np.shape(values))


def read_label_names(path: str | Path) -> dict[int, str]:
    """A label dictionary CSV with ``Index`` and ``Name`` columns (e.g. MUSE's) -> ``{index: name}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--label-names {path}: file not found")
    table = pd.read_csv(path)
    columns = {c.lower(): c for c in table.columns}
    if "index" not in columns or "name" not in columns:
        raise InputError(f"--label-names {path}: needs 'Index' and 'Name' columns, has {list(table.columns)}")
    index = pd.to_numeric(table[columns["index"]], errors="coerce")
    return {int(i): str(n) for i, n in zip(index, table[columns["name"]]) if pd.notna(i)}


def _training_population(state: LoadedRun, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each attribute's values over the run's training split; ``{}`` when its data cannot be read any more."""
    from medlatent.transforms.records import load_split_records

    try:
        records, info = load_split_records(state.data_cfg)
    except InputError:
        return {}
    values = np.stack([np.asarray(r["attrs"], dtype=np.float64) for r in records["train"]])
    return {name: values[:, info.attributes.index(name)] for name in names if name in info.attributes}


def _percentile(population: np.ndarray | None, value: float) -> float:
    if population is None or not len(population) or not math.isfinite(value):
        return math.nan
    return float(percentileofscore(population, value, kind="mean"))


def _label_grid(path: str | Path, shape: tuple[int, ...], affine: np.ndarray, where: str = "--labels") -> np.ndarray:
    """A label map on the scan's grid (``shape``, ``affine``), as integers; InputError when its grid is not the scan's."""
    if not Path(path).is_file():
        raise InputError(f"{where} {path}: label map not found")
    try:
        image = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"{where} {path}: cannot read the label map as NIfTI: {err}") from None
    if tuple(image.shape[:3]) != tuple(shape) or not np.allclose(image.affine, affine, atol=1e-3):
        raise InputError(f"{where} {path}: its grid {tuple(image.shape)} does not match the scan's {tuple(shape)} "
                         "(give the label map that was made on this scan)")
    return np.asarray(image.dataobj).astype(np.int64).reshape(shape)


def _check_labels_fit(labels: str | Path, scan: str | Path, where: str) -> None:
    """Before anything is written: a NIfTI scan's label map must share its grid (other formats are checked later)."""
    try:
        image = nib.load(str(scan))
    except Exception:  # noqa: BLE001 - not NIfTI: checked against the written map's grid instead
        return
    _label_grid(labels, image.shape[:3], image.affine, where)


def _write_segmentation(labels: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]], affine: np.ndarray,
                        path: Path) -> None:
    """Masks ``[(name, bool [X, Y, Z], rgb)]`` as one 3D Slicer segmentation; overlapping ones go to separate layers."""
    import slicerio

    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    segmentation = slicerio.create_segmentation(labels[0][1].shape, ras_to_lps @ affine)
    for name, mask, rgb in labels:
        slicerio.add_segment(segmentation, mask, {"id": safe_name(name), "name": name,
                                                  "color": [c / 255.0 for c in rgb]})
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)


def _colour_tables(names: Sequence[str], folder: Path) -> None:
    """Slicer colour table (``.ctbl``) and ITK-SNAP label description for the label values 1..N."""
    slicer = ["# 3D Slicer color table: label value, name, R G B A"] + ["0 background 0 0 0 0"]
    snap = ["# ITK-SnAP Label Description File", "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
            '    0     0    0    0     0  0  0    "Clear Label"']
    for value, name in enumerate(names, start=1):
        r, g, b = PALETTE[(value - 1) % len(PALETTE)]
        slicer.append(f"{value} {safe_name(name)} {r} {g} {b} 255")
        snap.append(f"{value:5d} {r:5d}{g:5d}{b:5d}     1  1  1    \"{name}\"")
    write_text_atomic(folder / "attention_colours.ctbl", "\n".join(slicer) + "\n")
    write_text_atomic(folder / "attention_labels_itksnap.txt", "\n".join(snap) + "\n")


@torch.no_grad()
def _probability(state: LoadedRun, mu: torch.Tensor, amap: AttributeMap) -> dict[str, Any] | None:
    if state.model.classifier is None:
        return None
    logits = state.model.classify(mu[None].to(state.device)).cpu()[0]
    classes = amap.classes or []
    if len(logits) == 1:
        name = classes[1] if len(classes) > 1 else "1"
        return {"class": name, "probability": float(torch.sigmoid(logits[0])), "label": amap.label}
    probs = torch.softmax(logits, 0)
    best = int(probs.argmax())
    return {"class": classes[best] if best < len(classes) else str(best), "probability": float(probs[best]),
            "label": amap.label}


def _one_map(state: LoadedRun, item: Mapping[str, Any], source: Any, spec: MapSpec, value: int, folder: Path,
             x: torch.Tensor) -> dict[str, Any]:
    """One map of one subject: NIfTI, top-5% label NIfTI and overlay PNG; returns what the page shows."""
    cam = attention_map(state.model, x, spec.dim, spec.settings, spacing=item_spacing(item),
                        body=item_body(item, state.device))[0].cpu()
    nifti, label_file, png = (folder / f for f in _map_files(spec))
    mapped = write_volume(cam, item, state.data_cfg, nifti, value_range=(0.0, 1.0))
    array = mapped.as_tensor()[0].numpy()
    affine = np.asarray(mapped.affine, dtype=np.float64)
    top = top_mass(array)
    write_nifti((top * value).astype(np.uint8), label_file, affine=affine, dtype=np.uint8)
    peak = np.unravel_index(int(np.argmax(array)), array.shape)
    peak_mm = affine[:3, :3] @ np.asarray(peak, dtype=np.float64) + affine[:3, 3]
    scan_ras, spacing = _ras(source if source else item["image"])
    map_ras, _ = _ras(mapped)
    describe = spec.settings.describe()
    save_overlay(scan_ras, map_ras, png, spacing=spacing, label=f"attention ({spec.title})",
                 title=f"{item.get('subject', '')}: {spec.title}; peak at ({peak_mm[0]:.0f}, {peak_mm[1]:.0f}, "
                       f"{peak_mm[2]:.0f}) mm")
    return {"spec": spec, "describe": describe, "png": png, "nifti": nifti.name, "label_file": label_file.name,
            "label_value": value, "peak_voxel": tuple(int(p) for p in peak), "peak_mm": tuple(float(v) for v in peak_mm),
            "structure": None, "top_mask": top, "affine": affine}


def _strip(state: LoadedRun, mu: torch.Tensor, amap: AttributeMap, name: str, fits: Mapping[str, Any],
           folder: Path) -> Path:
    """Decoded steps of one attribute's axis, labelled by the fit clipped to the training range, as one PNG."""
    values = torch.linspace(-3.0, 3.0, STRIP_STEPS)
    volumes = decode_latents(state.model, traverse_latents(mu, amap.dim_of(name), values))
    column = amap.names.index(name)
    labels, clipped = step_labels(values.tolist(), fits.get(name, {}), amap.minimum[column], amap.maximum[column])
    titles = []
    for value, label, edge in zip(values.tolist(), labels, clipped):
        sign = ("<=" if label <= amap.minimum[column] else ">=") if edge else "~"
        titles.append(f"z={value:+.1f}" + (f"\n{sign}{label:.4g}" if math.isfinite(label) else ""))
    path = folder / f"traversal_{safe_name(name)}.png"
    save_strip(list(volumes), titles, path, title=f"{name}: its latent dim {amap.dim_of(name)} moved from -3 to 3",
               vmin=0.0, vmax=1.0 if state.cfg["net"]["output"] == "sigmoid" else None)
    return path


def _subject(state: LoadedRun, amap: AttributeMap, specs: Sequence[MapSpec], subject: str, source: Any,
             item: Mapping[str, Any], folder: Path, labels_path: str | Path | None, label_names: Mapping[int, str],
             measured: Mapping[str, float], population: Mapping[str, np.ndarray], fits: Mapping[str, Any],
             sanity: dict[str, str]) -> dict[str, Any]:
    """Every output of one subject; returns its index row. ``sanity``: map key -> the check's verdict,
    filled on the first subject (the check is of the method on this model, not of one scan)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = as_batch(item, state.device)
    with torch.no_grad():
        mu = state.model.encode(x)[0][0].cpu()
    maps = [_one_map(state, item, source, spec, value, folder, x) for value, spec in enumerate(specs, start=1)]
    for m in maps:
        if m["spec"].key not in sanity:
            sanity[m["spec"].key] = sanity_check(state, m["spec"], item)
        m["sanity"] = sanity[m["spec"].key]
    if labels_path is not None:
        labels = _label_grid(labels_path, maps[0]["top_mask"].shape, maps[0]["affine"])
        for m in maps:
            value = int(labels[m["peak_voxel"]])
            m["structure"] = {"value": value, "name": label_names.get(value, "background" if value == 0
                                                                      else f"label {value}")}
    _write_segmentation([(f"{m['spec'].title} top {TOP_MASS:.0%}", m["top_mask"],
                          PALETTE[(m["label_value"] - 1) % len(PALETTE)]) for m in maps], maps[0]["affine"],
                        folder / "attention_top5.seg.nrrd")
    _colour_tables([m["spec"].title for m in maps], folder)
    write_text_atomic(folder / "OPENING.txt", opening_text(subject, source, [(m["nifti"], m["label_file"]) for m in maps]))
    attributes = []
    for name, dim in zip(amap.regularized, amap.dims):
        column = amap.names.index(name)
        encoded, clipped = step_labels([float(mu[dim])], fits.get(name, {}), amap.minimum[column],
                                       amap.maximum[column])
        seen = float(measured.get(name, math.nan))
        edge = ("low" if encoded[0] <= amap.minimum[column] else "high") if clipped[0] else ""
        attributes.append({"name": name, "z": float(mu[dim]), "encoded": float(encoded[0]), "clipped": edge,
                           "encoded_percentile": _percentile(population.get(name), float(encoded[0])),
                           "measured": seen, "measured_percentile": _percentile(population.get(name), seen),
                           "strip": _strip(state, mu, amap, name, fits, folder)})
    summary = {"subject": subject, "folder": folder.name, "source": str(source) if source else "", "run": str(state.run),
               "probability": _probability(state, mu, amap), "maps": maps, "attributes": attributes}
    write_text_atomic(folder / "report.html", subject_page(summary))
    for m in maps:
        m.pop("top_mask")
    return summary


def _labels_of(row: Mapping[str, Any], column: str, manifest: str | Path) -> str | None:
    """A manifest row's label map path (relative ones against the manifest's folder), or None when empty."""
    value = row.get(column)
    if not isinstance(value, str) or not value:
        return None
    return value if Path(value).is_absolute() else str(Path(manifest).parent / value)


def _measured(row: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, float]:
    if row is None:
        return {}
    out = {}
    for name in names:
        value = pd.to_numeric(pd.Series([row.get(name)]), errors="coerce").iloc[0]
        if pd.notna(value):
            out[name] = float(value)
    return out


def report(run: str | Path, input: str | Path | None = None, manifest: str | Path | None = None,  # noqa: A002
           mask: str | Path | None = None, labels: str | Path | None = None, label_names: str | Path | None = None,
           out: str | Path = "report", overwrite: bool = False) -> Path:
    """Write ``OUT/index.html`` and per subject ``OUT/<subject>/report.html`` with the maps beside it.

    Args:
        run: an Attri-VAE run.
        input, manifest: one scan, or a manifest (checked whole first; scans are read one at a time).
        mask: the scan's mask, for runs trained with ``data.mask_image`` (a manifest gives a ``mask`` column).
        labels: with ``input``, a label map on the scan's grid (e.g. its DLMUSE segmentation); with
            ``manifest``, the name of the manifest column that holds each subject's label map.
        label_names: a CSV with ``Index`` and ``Name`` columns naming the labels (e.g. the MUSE dictionary).
        out: the folder to write into.
        overwrite: replace files of an earlier report.

    Returns:
        ``out``.
    """
    if (input is None) == (manifest is None):
        raise InputError("report: give exactly one of INPUT or --manifest M")
    names = read_label_names(label_names) if label_names is not None else {}
    if input is not None and labels is not None and not Path(labels).is_file():
        raise InputError(f"--labels {labels}: file not found")
    state = load_run(run, "report")
    amap = AttributeMap.load(state.run)
    specs = default_maps(state, amap)
    per_subject = [f for spec in specs for f in _map_files(spec)] + list(SUBJECT_FILES) + \
        [f"traversal_{safe_name(n)}.png" for n in amap.regularized]
    if input is not None:
        subjects = {safe_name(Path(input).name.split(".")[0]): None}
        inputs: list[Any] = [input, mask, labels]
    else:
        if labels is not None:
            from medlatent.transforms.manifest import read_manifest

            if str(labels) not in read_manifest(manifest).columns:
                raise InputError(f"--labels {labels}: with --manifest, name a column of {manifest} that holds each "
                                 "subject's label map")
        subjects = output_names(manifest_subjects(manifest, state.data_cfg))
        inputs = [manifest]
    out = check_output_folder(out, ["index.html"] + [f"{name}/{f}" for name in subjects.values() for f in per_subject]
                              if input is None else ["index.html"] + [f"{next(iter(subjects))}/{f}" for f in per_subject],
                              inputs, overwrite)
    if input is not None and labels is not None:
        _check_labels_fit(labels, input, "--labels")
    elif labels is not None:
        from medlatent.transforms.manifest import read_manifest

        for i, row in read_manifest(manifest).iterrows():
            path = _labels_of(row.to_dict(), str(labels), manifest)
            if path is not None:
                _check_labels_fit(path, row["image"], f"{manifest}: row {i + 2} (subject {row['subject']}): {labels}")
    population = _training_population(state, amap.regularized)
    fits = calibration(state)
    sanity: dict[str, str] = {}
    rows = []
    if input is not None:
        name = next(iter(subjects))
        item = load_input(state, input, mask)
        rows.append(_subject(state, amap, specs, name, str(input), item, out / name, labels, names, {}, population,
                             fits, sanity))
    else:
        from medlatent.transforms.manifest import read_manifest

        table = read_manifest(manifest).set_index("subject", drop=False)
        for subject, source, item in iter_manifest(manifest, state.data_cfg):
            row = table.loc[subject].to_dict()
            labels_path = _labels_of(row, str(labels), manifest) if labels is not None else None
            rows.append(_subject(state, amap, specs, subject, source, item, out / subjects[subject], labels_path,
                                 names, _measured(row, amap.regularized), population, fits, sanity))
    index_rows = [{**{k: r[k] for k in ("subject", "source", "probability", "attributes")},
                   "page": f"{r['folder']}/report.html"}
                  for r in rows]
    write_text_atomic(out / "index.html", index_page(index_rows, str(state.run)))
    print(f"wrote reports of {len(rows)} subject(s) to {out} (open {out / 'index.html'} in a browser)")
    return out
