"""Generation with a VQ-VAE run: train an autoregressive prior over its code grids, sample, evaluate.

``train_prior`` encodes the run's splits once (cached in ``RUN/prior/codes.pt``, keyed to the
VQ-VAE checkpoint and data settings), then trains a :class:`CodePrior` with the shared engine
(``medlatent.engine.fit``) into ``RUN/prior/``: ``config.yaml`` (the ``prior`` and ``train``
sections), ``prior_info.json`` (grid shapes, codebook sizes, classes, voxel spacing),
``checkpoints/{last,best}.pt``, ``metrics.csv``, ``tb/`` and ``figures/``.

A two-level VQ-VAE gets one prior per level: the top grid's prior, and the bottom grid's prior
conditioned on the top grid. Training minimises the summed cross-entropy of both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medlatent import distributed as dist_utils
from medlatent.config import COMMON_DEFAULTS, dump_config, merge_into, parse_overrides
from medlatent.engine import Task, fit, make_loader, run_evaluation, seed_everything
from medlatent.errors import InputError
from medlatent.figures import save_slice_grid
from medlatent.metrics import reconstruction_metrics
from medlatent.nifti import write_nifti
from medlatent.runs import checkpoint_path, load_checkpoint, prepare_run, read_json, write_json
from medlatent.io import atomic_path, write_text_atomic
from medlatent.vqvae3d.prior_pixelcnn import PixelCNN3d
from medlatent.vqvae3d.prior_transformer import ORDERINGS, TransformerPrior

__all__ = ["PRIOR_DEFAULTS", "PRIORS", "CodePrior", "CodeGridDataset", "PriorTask", "build_prior", "train_prior",
           "load_prior", "sample", "sample_codes", "evaluate_prior", "mmd_test", "mean_pairwise_ssim",
           "unigram_bits_per_code"]

PRIORS = ("pixelcnn", "transformer")
LOG2E = 1.0 / math.log(2.0)

PRIOR_DEFAULTS: dict[str, Any] = {
    "prior": {
        "type": "transformer",
        "conditional": True,          # condition on the run's data.label when it has one
        "pixelcnn": {"channels": 32, "layers": 8, "kernel": 3},
        "transformer": {"dim": 128, "depth": 4, "heads": 4, "ordering": "raster_scan", "dropout": 0.0},
        "encode_batch_size": 4,       # volumes per batch when encoding the splits
        "sample_batch_size": 8,       # grids drawn together by `sample` and `evaluate --prior`
        "eval": {"num_samples": 16, "seed": 0, "temperature": 1.0, "top_k": None, "permutations": 1000,
                 "max_pairs": 300},
    },
    "train": {**copy.deepcopy(COMMON_DEFAULTS["train"]), "epochs": 30, "batch_size": 8, "lr": 1.0e-3,
              "best_metric": "val_bits_per_code", "best_mode": "min", "preview": False, "grad_clip": 1.0},
}


# --- the model: one prior per level -------------------------------------------------------------

class CodePrior(nn.Module):
    """Autoregressive priors for the code grids of one VQ-VAE, top level first.

    Level ``i > 0`` is conditioned on the grid of level ``i - 1`` (VQ-VAE-2: bottom given top).
    Every level is conditioned on the label when ``num_classes > 0``.
    """

    def __init__(self, levels: list[nn.Module]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def nll(self, codes: list[torch.Tensor], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats, summed over each grid: ``[B, levels]``."""
        out = []
        for i, (prior, grid) in enumerate(zip(self.levels, codes)):
            logits = prior(grid, labels, codes[i - 1] if i else None)  # [B, K, d, h, w]
            out.append(F.cross_entropy(logits.float(), grid, reduction="none").flatten(1).sum(1))  # [B]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``n`` grids per level (top first), each ``[n, d, h, w]``."""
        codes: list[torch.Tensor] = []
        for prior in self.levels:
            codes.append(prior.sample(n, labels, codes[-1] if codes else None, temperature=temperature,
                                      top_k=top_k, generator=generator))
        return codes


def build_prior(prior_cfg: dict[str, Any], info: dict[str, Any]) -> CodePrior:
    """A :class:`CodePrior` from the ``prior`` config section and ``prior_info.json``'s contents.

    ``info``: ``{"levels": [{"shape": [d, h, w], "num_codes": K}, ...] (top first), "classes": [...] | None}``.
    """
    kind = prior_cfg["type"]
    num_classes = len(info["classes"]) if info.get("classes") and prior_cfg["conditional"] else 0
    levels: list[nn.Module] = []
    previous: dict[str, Any] | None = None
    for level in info["levels"]:
        shape, codes = tuple(level["shape"]), int(level["num_codes"])
        context = int(previous["num_codes"]) if previous else None
        if kind == "pixelcnn":
            p = prior_cfg["pixelcnn"]
            levels.append(PixelCNN3d(codes, shape, channels=p["channels"], layers=p["layers"], kernel=p["kernel"],
                                     num_classes=num_classes, context_codes=context))
        else:
            t = prior_cfg["transformer"]
            levels.append(TransformerPrior(codes, shape, dim=t["dim"], depth=t["depth"], heads=t["heads"],
                                           ordering=t["ordering"], num_classes=num_classes, context_codes=context,
                                           dropout=t["dropout"]))
        previous = level
    return CodePrior(levels)


# --- data: encoded code grids --------------------------------------------------------------------

class CodeGridDataset(Dataset):
    """Items ``{"codes0": LongTensor [d, h, w], ("codes1": ...), "label"?: LongTensor [], "subject": str}``.

    Args:
        split: ``{"codes": [LongTensor [N, d, h, w] per level], "labels": LongTensor [N] | None,
            "subjects": [str] * N}`` as stored in the codes cache.
    """

    def __init__(self, split: dict[str, Any]) -> None:
        self.codes, self.labels, self.subjects = split["codes"], split.get("labels"), split["subjects"]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {f"codes{level}": grid[i] for level, grid in enumerate(self.codes)}
        if self.labels is not None:
            item["label"] = self.labels[i]
        item["subject"] = self.subjects[i]
        return item


def _batch_codes(batch: dict[str, Any], levels: int) -> list[torch.Tensor]:
    return [batch[f"codes{i}"].long() for i in range(levels)]


class PriorTask(Task):
    """The engine's view of prior training: cross-entropy over code indices, reported in bits per code."""

    curve_metrics = ("loss", "bits_per_code")

    def __init__(self, model: CodePrior, conditional: bool) -> None:
        self.model = model
        self.conditional = conditional
        self.levels = len(model.levels)
        self.codes_per_level = [math.prod(p.shape) for p in model.levels]

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch["label"].long() if self.conditional else None

    def _nll(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # the engine may hand a DDP wrapper: reach the CodePrior underneath
        inner = model.module if hasattr(model, "module") else model
        return inner.nll(_batch_codes(batch, self.levels), self._labels(batch))  # [B, levels] nats

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        nats_per_code = self._nll(model, batch).sum(1) / sum(self.codes_per_level)  # [B]
        loss = nats_per_code.mean()
        return loss, {"loss": loss.item(), "bits_per_code": loss.item() * LOG2E}

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        nll = self._nll(model, batch)  # [B, levels]
        total = nll.sum(1) / sum(self.codes_per_level)
        values = {"loss": total, "bits_per_code": total * LOG2E}
        if self.levels > 1:
            for i, name in enumerate(("top", "bottom")[: self.levels]):
                values[f"bits_per_code_{name}"] = nll[:, i] / self.codes_per_level[i] * LOG2E
        return values


# --- config ----------------------------------------------------------------------------------------

def _check_prior_cfg(cfg: dict[str, Any], source: str) -> None:
    """InputError naming the key for a value the prior cannot use."""
    prior = cfg["prior"]

    def positive_int(key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{source}: '{key}' must be a positive integer, got {value!r}")

    if prior["type"] not in PRIORS:
        raise InputError(f"{source}: 'prior.type' must be one of {list(PRIORS)}, got {prior['type']!r}")
    for key in ("channels", "layers", "kernel"):
        positive_int(f"prior.pixelcnn.{key}", prior["pixelcnn"][key])
    if prior["pixelcnn"]["kernel"] % 2 == 0:
        raise InputError(f"{source}: 'prior.pixelcnn.kernel' must be odd, got {prior['pixelcnn']['kernel']}")
    t = prior["transformer"]
    for key in ("dim", "depth", "heads"):
        positive_int(f"prior.transformer.{key}", t[key])
    if t["dim"] % t["heads"]:
        raise InputError(f"{source}: 'prior.transformer.dim' ({t['dim']}) must be divisible by "
                         f"'prior.transformer.heads' ({t['heads']})")
    if t["ordering"] not in ORDERINGS:
        raise InputError(f"{source}: 'prior.transformer.ordering' must be one of {list(ORDERINGS)}, got {t['ordering']!r}")
    for key in ("encode_batch_size", "sample_batch_size"):
        positive_int(f"prior.{key}", prior[key])
    positive_int("prior.eval.num_samples", prior["eval"]["num_samples"])
    positive_int("prior.eval.permutations", prior["eval"]["permutations"])
    _check_sampling(prior["eval"]["temperature"], prior["eval"]["top_k"],
                    (f"{source}: 'prior.eval.temperature'", f"{source}: 'prior.eval.top_k'"))


def _check_sampling(temperature: Any, top_k: Any, names: tuple[str, str] = ("sample: --temperature", "sample: --top-k")) -> None:
    """InputError unless ``temperature > 0`` and ``top_k`` is None or a positive integer (``names`` say where they came from)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise InputError(f"{names[0]} must be a positive number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"{names[1]} must be a positive integer, got {top_k!r}")


def _resolve_prior_cfg(prior: str | None, overrides: list[str] | None, base: dict[str, Any] | None = None,
                       source: str = "--set") -> dict[str, Any]:
    cfg = copy.deepcopy(base if base is not None else PRIOR_DEFAULTS)
    if prior is not None and base is None:
        cfg["prior"]["type"] = prior
    merge_into(cfg, parse_overrides(overrides), prefix="", strict=True, source=source)
    return cfg


def _prior_dir(run: Path, prior_dir: str | Path | None) -> Path:
    return Path(prior_dir) if prior_dir is not None else Path(run) / "prior"


def _load_prior_cfg(pdir: Path) -> dict[str, Any]:
    import yaml

    path = pdir / "config.yaml"
    if not path.is_file():
        raise InputError(f"{pdir}: no prior here (no config.yaml); train one with `medlatent train-prior RUN`")
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = copy.deepcopy(PRIOR_DEFAULTS)
    merge_into(cfg, raw, prefix="", strict=True, source=str(path))
    return cfg


# --- encoding the splits once --------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _spacing_of(image: torch.Tensor) -> list[float]:
    """Voxel size in mm of a preprocessed MetaTensor (column norms of its affine); 1 mm without one."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return [1.0, 1.0, 1.0]
    affine = torch.as_tensor(affine).double()
    if affine.dim() == 3:
        affine = affine[0]
    return [float(v) for v in affine[:3, :3].norm(dim=0)]


def encoded_splits(run: Path, pdir: Path, vqvae: nn.Module, vq_cfg: dict[str, Any], batch_size: int = 4,
                   splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Any]:
    """Code grids of the run's splits, encoded once and cached in ``pdir/codes.pt``.

    The cache is keyed to the VQ-VAE checkpoint's bytes and the data section, so a retrained
    VQ-VAE or changed preprocessing re-encodes. Returns ``{"key", "spacing": [3], "volume_shape": [3],
    "classes", "splits": {split: {"codes": [LongTensor [N, d, h, w] per level], "labels": LongTensor [N] | None,
    "subjects": [str]}}}``.
    """
    from medlatent.train import cache_dir_for
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    key = hashlib.sha1(json.dumps({"checkpoint": _file_digest(checkpoint_path(run, "best")),
                                   "data": vq_cfg["data"]}, sort_keys=True, default=str).encode()).hexdigest()
    cache = pdir / "codes.pt"
    if cache.is_file():
        stored = load_checkpoint(cache)
        if stored.get("key") == key and all(s in stored["splits"] for s in splits):
            return stored
    records, info = load_split_records(vq_cfg["data"])
    device = dist_utils.pick_device()
    vqvae = vqvae.to(device)
    result: dict[str, Any] = {"key": key, "classes": info.classes, "splits": {}, "spacing": None, "volume_shape": None}
    for split in splits:
        rows = records.get(split) or []
        grids: list[list[torch.Tensor]] = []
        labels: list[int] = []
        subjects: list[str] = []
        if rows:
            dataset = make_dataset(rows, vq_cfg["data"], train=False, cache_dir=cache_dir_for(vq_cfg, run))
            for batch in make_loader(dataset, batch_size, 0):
                image = batch["image"]
                if result["spacing"] is None:
                    result["spacing"] = _spacing_of(image)
                    result["volume_shape"] = [int(s) for s in image.shape[2:]]
                with torch.no_grad():
                    grids.append([g.cpu() for g in vqvae.encode_indices(image.as_tensor().to(device))])
                subjects.extend(batch["subject"])
                if "label" in batch:
                    labels.extend(int(v) for v in batch["label"])
        codes = [torch.cat([g[i] for g in grids]) for i in range(len(grids[0]))] if grids else []
        result["splits"][split] = {"codes": codes, "subjects": subjects,
                                   "labels": torch.tensor(labels, dtype=torch.long) if len(labels) == len(subjects) and labels else None}
    with atomic_path(cache) as tmp:
        torch.save(result, tmp)
    return result


# --- commands -----------------------------------------------------------------------------------

def train_prior(run: str | Path, prior: str | None = "transformer", overrides: list[str] | None = None,
                resume: bool = False, prior_dir: str | Path | None = None) -> Path:
    """``medlatent train-prior``: train a prior over ``run``'s code grids into ``RUN/prior`` (or ``prior_dir``).

    ``overrides`` are ``--set`` pairs on the ``prior`` and ``train`` sections (unknown keys are
    rejected). With ``resume`` the stored ``config.yaml`` is used; only ``train.*`` may then be
    overridden (say, more epochs), and ``prior`` must match the stored type.
    """
    from medlatent.vqvae3d.family import load_model

    run = Path(run)
    pdir = _prior_dir(run, prior_dir)
    vqvae, vq_cfg = load_model(run)
    if resume:
        stored = _load_prior_cfg(pdir)
        if prior is not None and prior != stored["prior"]["type"]:
            raise InputError(f"{pdir} holds a {stored['prior']['type']} prior; pass --prior "
                             f"{stored['prior']['type']} to resume it")
        changed = parse_overrides(overrides)
        if set(changed) - {"train"}:
            raise InputError(f"--set {sorted(set(changed) - {'train'})[0]}.*: a resumed prior keeps its "
                             f"architecture; only train.* may change")
        cfg = _resolve_prior_cfg(None, overrides, base=stored)
    else:
        cfg = _resolve_prior_cfg(prior, overrides)
    _check_prior_cfg(cfg, "--set" if overrides else str(pdir / "config.yaml"))
    prepare_run(cfg, pdir, resume)
    write_text_atomic(pdir / "config.yaml", dump_config(cfg))

    data = encoded_splits(run, pdir, vqvae, vq_cfg, batch_size=cfg["prior"]["encode_batch_size"])
    train_split = data["splits"]["train"]
    if not train_split["subjects"]:
        raise InputError(f"{run}: the training split is empty; nothing to train a prior on")
    conditional = bool(cfg["prior"]["conditional"] and data["classes"] and train_split["labels"] is not None)
    label_counts = (torch.bincount(train_split["labels"], minlength=len(data["classes"])).tolist()
                    if conditional else None)
    info = {"type": cfg["prior"]["type"],
            "levels": [{"shape": list(g.shape[1:]), "num_codes": int(k)}
                       for g, k in zip(train_split["codes"], vqvae.num_codes)],
            "classes": data["classes"] if conditional else None, "label_counts": label_counts,
            "label_column": vq_cfg["data"].get("label"), "spacing": data["spacing"],
            "volume_shape": data["volume_shape"]}
    write_json(pdir / "prior_info.json", info)

    seed_everything(int(cfg["train"]["seed"]))
    model = build_prior(cfg["prior"], info)
    task = PriorTask(model, conditional)
    val_split = data["splits"].get("val")
    val_set = CodeGridDataset(val_split) if val_split and val_split["subjects"] else None
    history = fit(task, CodeGridDataset(train_split), val_set, cfg, pdir, resume=resume)
    if history:
        last = history[-1]
        shown = last.get("val_bits_per_code", last.get("train_bits_per_code"))
        print(f"prior ({cfg['prior']['type']}): {len(history)} epochs, bits per code {shown:.4g}; saved in {pdir}")
    return pdir


def load_prior(run: str | Path, prior_dir: str | Path | None = None,
               which: str = "best") -> tuple[CodePrior, dict[str, Any], dict[str, Any]]:
    """The trained prior (eval mode, CPU), its config and its ``prior_info.json``.

    Raises:
        InputError: ``run`` has no trained prior (names the folder and the command that makes one).
    """
    pdir = _prior_dir(Path(run), prior_dir)
    if not (pdir / "checkpoints" / "last.pt").is_file() or not (pdir / "prior_info.json").is_file():
        raise InputError(f"{run}: no trained prior in {pdir}; run `medlatent train-prior {run}` first")
    cfg = _load_prior_cfg(pdir)
    info = read_json(pdir / "prior_info.json")
    model = build_prior(cfg["prior"], info)
    state = load_checkpoint(checkpoint_path(pdir, which))
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise InputError(f"{pdir}: checkpoint does not match its config.yaml: {err}") from None
    return model.eval(), cfg, info


def _labels_for(label: str | None, n: int, info: dict[str, Any], run: Path,
                generator: torch.Generator) -> torch.Tensor | None:
    """Class indices ``[n]`` for sampling: the named class, or drawn from the training frequencies."""
    classes = info.get("classes")
    if not classes:
        if label is not None:
            raise InputError(f"sample: --label {label!r}: the prior of {run} is not class-conditional "
                             f"(the run has no data.label, or prior.conditional was false)")
        return None
    if label is not None:
        if str(label) not in [str(c) for c in classes]:
            raise InputError(f"sample: --label {label!r} is not a class of {run} "
                             f"({info.get('label_column')}: {', '.join(map(str, classes))})")
        return torch.full((n,), [str(c) for c in classes].index(str(label)), dtype=torch.long)
    counts = torch.tensor(info["label_counts"], dtype=torch.float)
    return torch.multinomial(counts / counts.sum(), n, replacement=True, generator=generator)


def ras_affine(spacing: list[float], shape: list[int]) -> np.ndarray:
    """A 4x4 RAS affine with ``spacing`` (mm) whose origin puts the volume's centre at (0, 0, 0)."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -np.asarray(spacing, dtype=float) * (np.asarray(shape, dtype=float) - 1) / 2
    return affine


@torch.no_grad()
def sample_codes(prior: CodePrior, n: int, labels: torch.Tensor | None, temperature: float, top_k: int | None,
                 generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
    """``n`` code grids per level (top first), drawn ``batch_size`` at a time: ``[n, d, h, w]`` each."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        part = labels[start:start + size] if labels is not None else None
        chunks.append(prior.sample(size, part, temperature=temperature, top_k=top_k, generator=generator))
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@torch.no_grad()
def _decode(vqvae: nn.Module, codes: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Code grids -> volumes ``[n, 1, D, H, W]``, decoded ``batch_size`` at a time."""
    out = []
    for start in range(0, codes[0].shape[0], batch_size):
        out.append(vqvae.decode_indices([c[start:start + batch_size] for c in codes]).float().cpu())
    return torch.cat(out)


def sample(run: str | Path, n: int = 8, label: str | None = None, temperature: float = 1.0, top_k: int | None = None,
           seed: int = 0, out: str | Path | None = None, prior_dir: str | Path | None = None) -> list[Path]:
    """``medlatent sample``: ``n`` new volumes from the run's prior, written to ``out``.

    Writes ``sample_000.nii.gz`` ... (training spacing, RAS affine), ``samples.png`` (mid-slices
    of every sample) and ``samples.json`` (labels, settings). Returns the NIfTI paths.
    """
    from medlatent.vqvae3d.family import load_model

    run = Path(run)
    if n < 1:
        raise InputError(f"sample: -n must be at least 1, got {n}")
    if out is None:
        raise InputError("sample: -o DIR is required")
    _check_sampling(temperature, top_k)
    prior, cfg, info = load_prior(run, prior_dir)
    vqvae, _ = load_model(run)
    generator = torch.Generator().manual_seed(int(seed))
    labels = _labels_for(label, n, info, run, generator)
    torch.manual_seed(int(seed))
    started = time.perf_counter()
    codes = sample_codes(prior, n, labels, temperature, top_k, generator, cfg["prior"]["sample_batch_size"])
    volumes = _decode(vqvae, codes, cfg["prior"]["sample_batch_size"])  # [n, 1, D, H, W]
    seconds = time.perf_counter() - started
    out = Path(out)
    affine = ras_affine(info["spacing"] or [1.0, 1.0, 1.0], list(volumes.shape[2:]))
    paths = []
    names = []
    for i, volume in enumerate(volumes):
        path = out / f"sample_{i:03d}.nii.gz"
        write_nifti(volume[0], path, affine=affine)
        paths.append(path)
        names.append(f"#{i}" + (f" {info['classes'][int(labels[i])]}" if labels is not None else ""))
    save_slice_grid(list(volumes), names, out / "samples.png", title=f"{n} samples, T={temperature}, top-k={top_k}")
    write_json(out / "samples.json", {"run": str(run), "prior": cfg["prior"]["type"], "n": n, "seed": seed,
                                      "temperature": temperature, "top_k": top_k,
                                      "labels": [info["classes"][int(v)] for v in labels] if labels is not None else None,
                                      "spacing": info["spacing"], "seconds_per_volume": seconds / n,
                                      "files": [p.name for p in paths]})
    print(f"wrote {n} samples to {out} ({seconds / n:.2f} s per volume)")
    return paths


# --- evaluation ----------------------------------------------------------------------------------

def unigram_bits_per_code(train_codes: list[torch.Tensor], test_codes: list[torch.Tensor],
                          num_codes: list[int]) -> float:
    """Bits per code of the test grids under each level's code frequencies on the training grids.

    Add-one smoothing keeps codes unseen in training finite. This is the baseline a prior must beat.
    """
    bits, count = 0.0, 0
    for train, test, k in zip(train_codes, test_codes, num_codes):
        freq = torch.bincount(train.flatten(), minlength=k).double() + 1.0
        logp = torch.log2(freq / freq.sum())
        bits -= float(logp[test.flatten()].sum())
        count += test.numel()
    return bits / max(count, 1)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased squared MMD between feature sets ``x`` ``[n, F]`` and ``y`` ``[m, F]`` and its permutation p-value.

    Gaussian kernel on features standardised with the pooled mean and standard deviation; the
    bandwidth is the median pairwise distance (median heuristic). The p-value is
    ``(1 + #{permuted MMD >= observed}) / (1 + permutations)`` with the labels of the pooled
    set shuffled. Written here because it is twenty lines and the libraries that have it
    (torchmetrics' KID, alibi-detect) are heavy dependencies for one statistic.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)  # [n + m, n + m]
    bandwidth = np.median(sq[np.triu_indices(len(z), 1)]) or 1.0
    kernel = np.exp(-sq / bandwidth)
    n = len(x)

    def statistic(index: np.ndarray) -> float:
        a, b = index[:n], index[n:]
        kxx, kyy, kxy = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
        m = len(b)
        return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2 * kxy.mean())

    observed = statistic(np.arange(len(z)))
    rng = np.random.default_rng(seed)
    exceed = sum(statistic(rng.permutation(len(z))) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations)


def mean_pairwise_ssim(volumes: torch.Tensor, data_range: float, max_pairs: int = 300, seed: int = 0) -> float:
    """Mean SSIM over pairs of ``volumes`` ``[n, 1, D, H, W]`` (at most ``max_pairs`` random pairs).

    Lower means more diverse; compare samples against the same figure for real volumes.
    """
    pairs = [(i, j) for i in range(len(volumes)) for j in range(i + 1, len(volumes))]
    if not pairs:
        return float("nan")
    if len(pairs) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    values = []
    for start in range(0, len(pairs), 16):
        chunk = pairs[start:start + 16]
        a = volumes[[i for i, _ in chunk]]
        b = volumes[[j for _, j in chunk]]
        values.append(reconstruction_metrics(a, b, data_range=data_range)["ssim"])
    return float(torch.cat(values).mean())


def _pooled_features(vqvae: nn.Module, volumes: torch.Tensor) -> np.ndarray:
    """The VQ-VAE's pooled encoder features (``pre_*`` of ``vqvae3d.features.volume_features``): ``[n, F]``."""
    from medlatent.vqvae3d.features import volume_features

    rows = []
    for volume in volumes:
        features, _ = volume_features(vqvae, volume[None])
        rows.append([v for k, v in features.items() if k.startswith("pre_")])
    return np.asarray(rows, dtype=np.float64)


def _real_volumes(run: Path, vq_cfg: dict[str, Any], split: str) -> torch.Tensor:
    """Preprocessed volumes of a split: ``[n, 1, D, H, W]``."""
    from medlatent.train import cache_dir_for
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    records, _ = load_split_records(vq_cfg["data"])
    dataset = make_dataset(records.get(split) or [], vq_cfg["data"], train=False, cache_dir=cache_dir_for(vq_cfg, run))
    return torch.stack([dataset[i]["image"].as_tensor().float() for i in range(len(dataset))])


def evaluate_prior(run: str | Path, prior_dir: str | Path | None = None) -> dict[str, Any]:
    """``medlatent evaluate RUN --prior``: write ``RUN/prior/eval.json`` and return its figures.

    - ``test_bits_per_code``: test-split NLL of the prior in bits per code (all levels together),
      next to ``unigram_bits_per_code`` (code frequencies of the training split) for scale;
    - ``sample_seconds_per_volume``: wall time to draw and decode one volume (batched);
    - ``mmd``, ``mmd_p``: MMD between samples and real test volumes on the VQ-VAE's pooled
      encoder features, with its permutation p-value (small p: the two sets are distinguishable);
    - ``diversity_samples`` / ``diversity_real``: mean pairwise SSIM among samples and among
      real test volumes (samples far above the real figure have collapsed onto few modes).
    """
    from medlatent.vqvae3d.family import load_model

    run = Path(run)
    pdir = _prior_dir(run, prior_dir)
    prior, cfg, info = load_prior(run, prior_dir)
    vqvae, vq_cfg = load_model(run)
    data = encoded_splits(run, pdir, vqvae, vq_cfg, batch_size=cfg["prior"]["encode_batch_size"])
    test = data["splits"].get("test")
    if not test or not test["subjects"]:
        raise InputError(f"{run}: the test split is empty; nothing to evaluate the prior on")
    conditional = bool(info.get("classes"))
    device = dist_utils.pick_device()
    prior.to(device)
    task = PriorTask(prior, conditional)
    loader = make_loader(CodeGridDataset(test), int(cfg["train"]["batch_size"]), 0)
    means, rows = run_evaluation(task, prior, loader, device)
    unigram = unigram_bits_per_code(data["splits"]["train"]["codes"], test["codes"], vqvae.num_codes)

    ev = cfg["prior"]["eval"]
    generator = torch.Generator().manual_seed(int(ev["seed"]))
    labels = _labels_for(None, ev["num_samples"], info, run, generator)
    torch.manual_seed(int(ev["seed"]))
    started = time.perf_counter()
    codes = sample_codes(prior, ev["num_samples"], labels, ev["temperature"], ev["top_k"], generator,
                         cfg["prior"]["sample_batch_size"])
    samples = _decode(vqvae.to(device), [c.to(device) for c in codes], cfg["prior"]["sample_batch_size"])
    seconds = (time.perf_counter() - started) / ev["num_samples"]

    real = _real_volumes(run, vq_cfg, "test")
    vqvae.cpu()
    mmd, mmd_p = mmd_test(_pooled_features(vqvae, samples), _pooled_features(vqvae, real),
                          permutations=ev["permutations"], seed=ev["seed"])
    data_range = float(real.max() - real.min()) or 1.0
    result = {"prior": cfg["prior"]["type"], "test_bits_per_code": means["bits_per_code"],
              "unigram_bits_per_code": unigram, "sample_seconds_per_volume": seconds,
              "mmd": mmd, "mmd_p": mmd_p,
              "diversity_samples": mean_pairwise_ssim(samples, data_range, ev["max_pairs"], ev["seed"]),
              "diversity_real": mean_pairwise_ssim(real, data_range, ev["max_pairs"], ev["seed"]),
              "num_samples": ev["num_samples"], "num_test": len(rows), "temperature": ev["temperature"],
              "top_k": ev["top_k"]}
    result.update({f"test_{k}": v for k, v in means.items() if k.startswith("bits_per_code_")})
    write_json(pdir / "eval.json", result)
    print("prior eval: " + ", ".join(f"{k} {result[k]:.4g}" for k in (
        "test_bits_per_code", "unigram_bits_per_code", "sample_seconds_per_volume", "mmd", "mmd_p",
        "diversity_samples", "diversity_real")))
    return result
