"""User inputs of run-based commands: one scan, or every scan of a manifest, preprocessed as the run was.

A manifest is checked whole before the first output is written (the checks of ``medlatent data
check``), so a bad row 5 never leaves the folders of rows 1-4 behind; then the scans are read
one at a time, so memory does not grow with the number of subjects. Output names of subjects
are made safe and unique here, once.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medlatent.commands.runs import LoadedRun
from medlatent.errors import InputError
from medlatent.io import safe_name

__all__ = ["load_input", "warn_if_unlike_training", "as_batch", "iter_manifest", "manifest_subjects", "output_names"]


def warn_if_unlike_training(fingerprint: Mapping[str, Any] | None, item: Mapping[str, Any], source: str) -> list[str]:
    """Warn on stderr, naming ``source`` and what differs, when a scan does not look like the run's training data.

    ``fingerprint``: the run's (``LoadedRun.fingerprint``; None for runs trained before it existed:
    nothing is checked). ``item``: the scan as the pipeline loaded it. Returns the differences.
    """
    from medlatent.transforms.fingerprint import differences, volume_facts

    if fingerprint is None:
        return []
    found = differences(fingerprint, volume_facts(item["image"].meta))
    if found:
        print(f"medlatent: warning: {source} does not look like this run's training data "
              f"({fingerprint['n']} scans): {'; '.join(found)}. The model never saw such a scan; "
              f"its outputs for it may mean nothing.", file=sys.stderr)
    return found


def load_input(state: LoadedRun, path: str | Path, mask: str | Path | None = None) -> dict[str, Any]:
    """One scan preprocessed exactly as the run's training data (see ``transforms.pipeline.load_volume``).

    A scan unlike the training data (intensities, spacing, shape, orientation) is warned about on stderr.
    """
    from medlatent.transforms.pipeline import load_volume

    item = load_volume(path, state.data_cfg, mask=mask)
    warn_if_unlike_training(state.fingerprint, item, str(path))
    return item


def as_batch(item: dict[str, Any], device: torch.device) -> torch.Tensor:
    """A preprocessed item's image as a plain ``[1, 1, D, H, W]`` float tensor on ``device``."""
    image = item["image"]
    image = image.as_tensor() if hasattr(image, "as_tensor") else image
    return image.float()[None].to(device)


def _check_csv(manifest: Path) -> None:
    from medlatent.transforms.check import check_manifest

    report = check_manifest(manifest)
    if report.problems:
        shown = "\n  ".join(report.problems[:20])
        more = f"\n  (+{len(report.problems) - 20} more)" if len(report.problems) > 20 else ""
        raise InputError(f"{manifest}: {len(report.problems)} problem(s); nothing was written "
                         f"(`medlatent data check {manifest}` lists them too):\n  {shown}{more}")


def iter_manifest(manifest: str | Path, data_cfg: dict[str, Any], fingerprint: Mapping[str, Any] | None = None
                  ) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(subject, source, preprocessed item)`` for each scan of a manifest CSV or MedMNIST ``.npz``.

    ``source`` is the image path (``""`` for an npz volume). A CSV is checked whole first;
    InputError lists every bad row (header = row 1, as in ``data check``). With the run's
    ``fingerprint``, each scan unlike the training data is warned about on stderr.
    """
    for subject, source, item in _iter_manifest(manifest, data_cfg):
        warn_if_unlike_training(fingerprint, item, source or f"{manifest} subject {subject}")
        yield subject, source, item


def _iter_manifest(manifest: str | Path, data_cfg: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    from medlatent.transforms.pipeline import iter_manifest_volumes, preprocessing
    from medlatent.transforms.records import load_split_records

    manifest = Path(manifest)
    if manifest.suffix.lower() == ".npz":
        cfg = {**copy.deepcopy(data_cfg), "manifest": str(manifest), "attributes": [], "label": None}
        records, _ = load_split_records(cfg)
        pre = preprocessing(data_cfg, keys=("image",))
        for split in ("train", "val", "test"):
            for record in records.get(split, []):
                yield record["subject"], "", pre({"image": record["image"], "subject": record["subject"]})
        return
    _check_csv(manifest)
    for row, item in iter_manifest_volumes(manifest, data_cfg):
        subject = str(row["subject"])
        item["subject"] = subject
        yield subject, str(row["image"]), item


def manifest_subjects(manifest: str | Path, data_cfg: dict[str, Any]) -> list[str]:
    """The subject IDs of a manifest in the order :func:`iter_manifest` yields them."""
    from medlatent.transforms.manifest import read_manifest
    from medlatent.transforms.records import load_split_records

    manifest = Path(manifest)
    if manifest.suffix.lower() == ".npz":
        cfg = {**copy.deepcopy(data_cfg), "manifest": str(manifest), "attributes": [], "label": None}
        records, _ = load_split_records(cfg)
        return [r["subject"] for split in ("train", "val", "test") for r in records.get(split, [])]
    return [str(s) for s in read_manifest(manifest)["subject"]]


def output_names(subjects: Sequence[str]) -> dict[str, str]:
    """Subject ID -> a file or folder name that stays in its folder and is unique.

    ``a/b`` and ``a_b`` would both become ``a_b``, and ``.``/``..`` would become nothing: such
    collisions are an InputError naming both IDs rather than one subject's output overwriting
    another's.
    """
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for subject in subjects:
        name = safe_name(subject)
        if name in taken and taken[name] != subject:
            raise InputError(f"subjects {taken[name]!r} and {subject!r} both map to the output name {name!r}; "
                             "rename one of them in the manifest")
        if subject in names:
            raise InputError(f"subject {subject!r} appears more than once in the manifest")
        taken[name] = subject
        names[subject] = name
    return names
