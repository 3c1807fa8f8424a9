"""MONAI dictionary pipelines: deterministic preprocessing, random augmentation, caching datasets, inversion.

Every item is a dict ``{"image": MetaTensor[1,D,H,W] float32, "mask"?: MetaTensor[1,D,H,W],
"label"?: int64 tensor [], "attrs"?: float32 tensor [A], "subject": str}``. The image keeps the
spatial transforms it went through in ``applied_operations``, so any model-space volume can be
mapped back onto the input file's grid with :func:`to_input_geometry`.

Randomness (see :func:`augmentation`): MONAI ``Rand*`` transforms draw from their own NumPy
``RandomState``, which ``monai.data.DataLoader`` reseeds from torch's global RNG when it is built
(``num_workers=0``) or in each worker (``worker_init_fn``); torchio draws from torch's global RNG.
Seeding torch before building the DataLoader therefore reproduces the augmentation of an epoch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor
from monai.transforms.utils import reset_ops_id
from monai.utils import convert_to_tensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    LoadImage,
    MapTransform,
    MaskIntensityd,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandTorchIOd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    ScaleIntensityd,
    Spacingd,
    Zoomd,
)

from medlatent.errors import InputError
from medlatent.transforms.check import content_problems, grid_problem, header_problem, shape_problem
from medlatent.transforms.disk_cache import TensorDiskCache
from medlatent.transforms.fingerprint import META_KEY as FINGERPRINT_KEY
from medlatent.transforms.fingerprint import intensity_percentiles, volume_facts
from medlatent.transforms.settings import CACHE_MODES, INTENSITY_MODES, SPATIAL_FITS
from medlatent.transforms.sitk_reader import SimpleITKReader

# bump when the deterministic pipeline or the cache format changes, so disk caches of an older version
# are not reused (3: tensor-only files, transforms/disk_cache.py; 4: the loader records raw intensity
# percentiles for the run's fingerprint)
PIPELINE_VERSION = 4


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """The foreground of ``CropForegroundd``: nonzero voxels.

    Module-level (not a lambda) so the pipeline pickles for spawned DataLoader workers, and an
    exported bundle's config can name it.
    """
    return x != 0


def _first_input_error(err: BaseException) -> InputError | None:
    """MONAI's Compose wraps errors in RuntimeError; find the InputError raised underneath, if any."""
    while err is not None:
        if isinstance(err, InputError):
            return err
        err = err.__cause__ or err.__context__
    return None


class LoadVolumed(MapTransform):
    """Load each key into a channel-first ``MetaTensor[1, X, Y, Z]`` float32, refusing what is not one usable volume.

    Paths go through MONAI ``LoadImage`` (nibabel for NIfTI, which applies ``scl_slope`` so
    intensities are physical; :class:`~transforms.sitk_reader.SimpleITKReader` for NRRD/MHA/...).
    Arrays (MedMNIST volumes, ``[D,H,W]`` or ``[1,D,H,W]``) become a MetaTensor with an identity
    affine, i.e. 1 mm voxels already in RAS, so the rest of the pipeline treats both alike.

    Every volume it reads passes the checks of ``medlatent data check`` (:mod:`transforms.check`,
    where each check lives): the header first (missing, empty, unparsable, more than 2^30 voxels,
    before anything is allocated), then the voxels (one 3D channel, no NaN/Inf, an image not
    constant), then a mask's grid against its image's (shape and affine). A failure raises
    :class:`~medlatent.errors.InputError` naming the key and the file, in the same words as
    ``data check``.
    """

    def __init__(self, keys: Sequence[str], allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        # registered last = tried first, but it declines NIfTI so nibabel keeps those files
        self.loader.register(SimpleITKReader())

    def _load(self, key: Hashable, value: Any, name: str) -> MetaTensor:
        if isinstance(value, (str, os.PathLike)):
            problem = header_problem(value)
            if problem is None:
                try:
                    return self.loader(value)
                except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
                    cause = err.__cause__ or err
                    problem = f"is unreadable or truncated: {type(cause).__name__}: {cause}"
            raise InputError(f"{key} {name} {problem}")
        array = convert_to_tensor(value, dtype=torch.float32)
        array = array[None] if array.ndim == 3 else array
        return MetaTensor(array, affine=torch.eye(4, dtype=torch.float64),
                          meta={"filename_or_obj": name, "original_channel_dim": 0, "space": "RAS",
                                "original_affine": np.eye(4), "spatial_shape": np.asarray(array.shape[1:])})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            name = str(value) if isinstance(value, (str, os.PathLike)) else f"{d.get('subject', '?')}:{key}"
            img = self._load(key, value, name)
            problems = [] if img.ndim == 4 and img.shape[0] == 1 else [shape_problem(tuple(img.shape))]
            problems += content_problems(img.as_tensor().numpy(), "image" if key == "image" else str(key))
            if key != "image" and isinstance(d.get("image"), MetaTensor):
                grid = grid_problem(tuple(img.shape[1:]), img.affine.numpy(), tuple(d["image"].shape[1:]),
                                    d["image"].affine.numpy())
                problems += [grid] if grid else []
            if problems:
                raise InputError(f"{key} {name} {'; '.join(problems)}")
            if key == "image":  # the raw intensities, for the run's fingerprint (transforms/fingerprint.py)
                img.meta[FINGERPRINT_KEY] = intensity_percentiles(img.as_tensor().numpy())
            d[key] = img.float()
        return d


def preprocessing_steps(data_cfg: Mapping[str, Any], keys: Sequence[str] = ("image", "mask")) -> list[tuple[type, dict[str, Any]]]:
    """The deterministic pipeline as ``(transform class, keyword arguments)`` pairs: see :func:`preprocessing`.

    One list serves both the Compose used in training and inference and the ``preprocessing``
    section of an exported MONAI bundle (``medlatent export``), so the two cannot drift apart.
    Arguments are plain data (lists, numbers, strings) except ``select_fn``, a module-level function.
    """
    keys = list(keys)
    modes_lin = ["bilinear" if k == "image" else "nearest" for k in keys]
    # torch's legacy "nearest" samples floor(i * scale): half an input voxel off the points that
    # "trilinear" samples, which moved IXI's ventricle masks off the ventricles; "nearest-exact"
    # samples the same centres as the image
    modes_tri = ["trilinear" if k == "image" else "nearest-exact" for k in keys]
    steps: list[tuple[type, dict[str, Any]]] = [
        (LoadVolumed, dict(keys=keys)),
        # explicit labels: world axes are RAS as nibabel and MONAI define them
        (Orientationd, dict(keys=keys, axcodes="RAS", labels=[list(p) for p in zip("LPI", "RAS")],
                            allow_missing_keys=True)),
    ]
    if data_cfg.get("mask_image"):
        # on the scan's own grid, before any resampling blurs the mask's edge into the image
        steps.append((MaskIntensityd, dict(keys=["image"], mask_key="mask")))
    if data_cfg.get("spacing"):
        spacing = data_cfg["spacing"]
        spacing = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing]
        steps.append((Spacingd, dict(keys=keys, pixdim=spacing, mode=modes_lin, allow_missing_keys=True)))
    if data_cfg.get("mask_crop_margin") is not None:
        # the label map's box, before intensity scaling, so the percentiles are those of the box
        steps.append((CropForegroundd, dict(keys=keys, source_key="mask", select_fn=is_nonzero,
                                            margin=int(data_cfg["mask_crop_margin"]), allow_smaller=True,
                                            start_coord_key=None, end_coord_key=None, allow_missing_keys=True)))
    if data_cfg.get("zoom"):
        steps.append((Zoomd, dict(keys=keys, zoom=[float(z) for z in data_cfg["zoom"]], mode=modes_tri,
                                  keep_size=False, allow_missing_keys=True)))
    intensity = data_cfg.get("intensity", "percentile") or "none"
    if intensity == "percentile":
        steps.append((ScaleIntensityRangePercentilesd, dict(keys=["image"], lower=0.5, upper=99.5, b_min=0.0,
                                                            b_max=1.0, clip=True)))
    elif intensity == "minmax":
        # for masks and small structures, where the 0.5-99.5 percentiles coincide
        steps.append((ScaleIntensityd, dict(keys=["image"], minv=0.0, maxv=1.0)))
    elif intensity == "zscore":
        steps.append((NormalizeIntensityd, dict(keys=["image"], nonzero=True)))
    elif intensity != "none":  # the data section's schema (transforms/settings.py) admits no other
        raise ValueError(f"data.intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if data_cfg.get("foreground_crop"):
        # no coordinate keys: items must carry only the documented keys so they collate
        steps.append((CropForegroundd, dict(keys=keys, source_key="image", select_fn=is_nonzero, margin=2,
                                            allow_smaller=True, start_coord_key=None, end_coord_key=None,
                                            allow_missing_keys=True)))
    size = [int(s) for s in data_cfg["spatial_size"]]
    fit = data_cfg.get("spatial_fit", "resize")
    if fit == "resize":
        steps.append((Resized, dict(keys=keys, spatial_size=size, mode=modes_tri, allow_missing_keys=True)))
    elif fit == "pad_crop":
        steps.append((ResizeWithPadOrCropd, dict(keys=keys, spatial_size=size, allow_missing_keys=True)))
    else:
        raise ValueError(f"data.spatial_fit must be one of {SPATIAL_FITS}, got {fit!r}")
    # EnsureTyped, not ToTensord: ToTensord is invertible and would add "<key>_transforms" entries to items
    steps.append((EnsureTyped, dict(keys=["label", "attrs"], data_type="tensor", track_meta=False,
                                    allow_missing_keys=True)))
    return steps


def preprocessing(data_cfg: Mapping[str, Any], keys: Sequence[str] = ("image", "mask")) -> Compose:
    """The deterministic part of the pipeline, configured by the ``data`` section.

    Load -> channel first -> Orientation RAS -> image * (mask > 0) (``data.mask_image``, e.g. a
    brain mask for skull-stripping; every item then needs a mask on the image's grid) -> Spacing
    (``data.spacing`` mm, optional) -> crop to the mask's bounding box plus ``data.mask_crop_margin``
    voxels (optional; needs a mask) -> Zoom by ``data.zoom`` per axis (optional) -> intensity
    (``data.intensity``: percentile 0.5-99.5 -> [0,1] clipped | minmax -> [0,1] | zscore on nonzero voxels | none; image only) -> CropForeground
    (``data.foreground_crop``) -> Resize to ``data.spatial_size`` (trilinear image, nearest-exact
    mask) or, with ``data.spatial_fit: pad_crop``, ResizeWithPadOrCrop.

    Args:
        data_cfg: the ``data`` section of a resolved config.
        keys: volume keys; ``"image"`` first, the rest are label maps (nearest interpolation).
            Keys missing from an item are skipped.

    Returns:
        A Compose mapping ``{"image": path | array, ...}`` to ``{"image": MetaTensor[1,*spatial_size], ...}``.
    """
    return Compose([cls(**kwargs) for cls, kwargs in preprocessing_steps(data_cfg, keys)])


def augmentation(data_cfg: Mapping[str, Any]) -> Compose | None:
    """Random augmentation named in ``data.augment`` (applied after the cache, training only).

    ``flip``: left-right flip (RAS axis 0), p=0.5. ``affine``: rotation up to 0.1 rad, scale +-10%,
    shift up to 4 voxels, p=0.5 (bilinear image, nearest mask). ``rigid``: the same rotation and shift
    without scaling, for runs whose attributes are volumes or sizes that a rescaled scan would
    contradict. ``bias_field``: torchio
    ``RandomBiasField`` (coefficients 0.3, order 3), p=0.5, MRI intensity inhomogeneity.
    ``noise``: Gaussian noise, std 0.05 (in normalised units), p=0.5. ``rotate90``: 1-3 quarter
    turns in axes 0-1 (in-plane for short-axis stacks), p=0.5; needs a square in-plane grid.

    Randomness: MONAI transforms use their ``RandomState`` (reseeded from torch by
    ``monai.data.DataLoader``, or ``Compose.set_random_state(seed)``); torchio uses torch's
    global RNG. Seed torch before building the DataLoader to reproduce an epoch.

    Returns:
        A Compose over ``{"image", "mask"?}``, or None when ``data.augment`` is empty.
    """
    names = list(data_cfg.get("augment") or [])
    keys = ["image", "mask"]
    steps: list = []
    for name in names:
        if name == "flip":
            steps.append(RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True))
        elif name in ("affine", "rigid"):
            scale = (0.1, 0.1, 0.1) if name == "affine" else None
            steps.append(RandAffined(keys, prob=0.5, rotate_range=(0.1, 0.1, 0.1), scale_range=scale,
                                     translate_range=(4, 4, 4), mode=("bilinear", "nearest"),
                                     padding_mode="zeros", allow_missing_keys=True))
        elif name == "bias_field":
            steps.append(RandTorchIOd(["image"], "RandomBiasField", coefficients=0.3, order=3, p=0.5))
        elif name == "rotate90":
            # quarter turns in the first two axes (the in-plane axes of a slice stack); exact, no interpolation
            steps.append(RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True))
        elif name == "noise":
            steps.append(RandGaussianNoised("image", prob=0.5, mean=0.0, std=0.05))
        else:
            raise ValueError(f"data.augment: unknown augmentation {name!r}")
    return Compose(steps) if steps else None


def _volume_keys(records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    return ("image", "mask") if any("mask" in r for r in records) else ("image",)


def preprocessing_hash(data_cfg: Mapping[str, Any]) -> str:
    """A short hash of the keys that change preprocessed tensors (names the disk-cache folder)."""
    relevant = {k: data_cfg.get(k) for k in ("spatial_size", "spacing", "intensity", "foreground_crop", "spatial_fit",
                                             "mask_image", "mask_crop_margin", "zoom")}
    relevant["version"] = PIPELINE_VERSION
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


def needs_mask(data_cfg: Mapping[str, Any]) -> str | None:
    """The data key that makes every scan need its mask (``mask_image``, ``mask_crop_margin``), or None."""
    if data_cfg.get("mask_image"):
        return "mask_image"
    if data_cfg.get("mask_crop_margin") is not None:
        return "mask_crop_margin"
    return None


def check_masks(records: Sequence[Mapping[str, Any]], data_cfg: Mapping[str, Any]) -> None:
    """With ``data.mask_image`` or ``data.mask_crop_margin`` every record needs a mask; InputError naming
    the subjects without one."""
    key = needs_mask(data_cfg)
    if key is None:
        return
    missing = [str(r.get("subject", "?")) for r in records if r.get("mask") is None]
    if missing:
        raise InputError(f"config key 'data.{key}' is set but {len(missing)} subject(s) have no mask "
                         f"(data.masks or a manifest 'mask' column): {missing[:10]}")


class _CheckedCacheDataset(CacheDataset):
    """A CacheDataset that, while it fills its cache, collects every bad item's InputError instead of stopping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.errors: dict[int, InputError] = {}  # index -> what is wrong with that item (filled by the threads)
        super().__init__(*args, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # noqa: BLE001 - only a bad input is collected; anything else is raised
            inner = _first_input_error(err)
            if inner is None:
                raise
            self.errors[idx] = inner
            return None


def _read_each(read: Any, n: int) -> tuple[list[Any], dict[int, InputError]]:
    """``read(i)`` for i in 0..n-1: the items read, and the InputError of each that fails (others are raised)."""
    items, errors = [], {}
    for i in range(n):
        try:
            items.append(read(i))
        except Exception as err:  # noqa: BLE001 - only a bad input is collected; anything else is raised
            inner = _first_input_error(err)
            if inner is None:
                raise
            errors[i] = inner
    return items, errors


def _bad_rows(errors: Mapping[int, InputError], records: Sequence[Mapping[str, Any]]) -> str:
    """One line per bad item: ``row R (subject S): image FILE <problem>`` (the row as in data check)."""
    lines = []
    for i in sorted(errors):
        record = records[i]
        subject = record.get("subject", "?")
        where = f"row {record['row']} (subject {subject})" if record.get("row") is not None else f"subject {subject}"
        lines.append(f"{where}: {errors[i]}")
    return "\n".join(lines)


def make_dataset(records: Sequence[Mapping[str, Any]], data_cfg: Mapping[str, Any], train: bool,
                 cache_dir: Path | None = None, check: bool = False) -> Dataset:
    """A MONAI dataset over ``records`` (from :func:`transforms.records.load_split_records`).

    ``data.cache``: ``memory`` -> CacheDataset (everything preprocessed once, at construction);
    ``disk`` -> :class:`~transforms.disk_cache.TensorDiskCache` (tensor-only files, read with
    ``weights_only=True``) under ``cache_dir/pre-<hash of the preprocessing keys>``;
    ``none`` -> Dataset. Only the deterministic prefix is cached; augmentation runs after it on a copy,
    and only when ``train`` is True.

    Every scan read passes :class:`LoadVolumed`'s checks (those of ``data check``). The memory cache
    reads every scan here; with ``check`` the other modes do too (the disk cache is built now, so
    later epochs read it and not the files; an uncached dataset reads each file once more). A bad
    scan found here raises one InputError listing every bad record, by CSV row (a record's ``row``,
    header = row 1), subject and file. ``dataset.volume_facts`` holds the
    :func:`~transforms.fingerprint.volume_facts` of the scans read here (empty when none were).

    Returns:
        A Dataset whose items are ``{"image": MetaTensor[1,D,H,W], "mask"?, "label"?, "attrs"?, "subject"}``,
        collatable by ``monai.data.DataLoader``.
    """
    check_masks(records, data_cfg)
    pre = preprocessing(data_cfg, keys=_volume_keys(records))
    aug = augmentation(data_cfg) if train else None
    # flat list: CacheDataset caches up to the first random transform, and a nested Compose counts as random
    transform = Compose(list(pre.transforms) + (list(aug.transforms) if aug else []))
    # the row number is for messages; items carry only the documented keys so they collate
    data = [{k: v for k, v in r.items() if k != "row"} for r in records]
    mode = data_cfg.get("cache", "memory") or "none"
    errors: dict[int, InputError] = {}
    items: list[Any] = []
    if mode == "memory":
        dataset: Dataset = _CheckedCacheDataset(data, transform, cache_rate=1.0, num_workers=os.cpu_count() or 1,
                                                progress=False)
        errors, items = dataset.errors, [item for item in dataset._cache if item is not None]
    elif mode == "disk":
        folder = cache_dir or data_cfg.get("cache_dir")
        if not folder:
            raise InputError("config key 'data.cache': 'disk' needs data.cache_dir (or a cache_dir argument)")
        folder = Path(folder) / f"pre-{preprocessing_hash(data_cfg)}"
        folder.mkdir(parents=True, exist_ok=True)
        # tensor-only files read with weights_only=True: a cache file never runs code
        dataset = TensorDiskCache(data, transform, cache_dir=folder)
        if check:
            items, errors = _read_each(lambda i: dataset._cachecheck(dataset.data[i]), len(data))
    elif mode == "none":
        dataset = Dataset(data, transform)
        if check:
            items, errors = _read_each(lambda i: pre(copy.deepcopy(data[i])), len(data))
    else:
        raise ValueError(f"data.cache must be one of {CACHE_MODES}, got {mode!r}")
    if errors:
        raise InputError(f"{len(errors)} of {len(data)} scans cannot be used:\n{_bad_rows(errors, records)}")
    # what the scans read here looked like on disk (transforms/fingerprint.py), for the run's fingerprint
    dataset.volume_facts = [volume_facts(item["image"].meta) for item in items]
    return dataset


def load_volume(path: str | Path, data_cfg: Mapping[str, Any], mask: str | Path | None = None) -> dict[str, Any]:
    """Preprocess one input file exactly as in training (for reconstruct / attention / traverse).

    Args:
        path: the scan.
        data_cfg: the run's ``data`` section.
        mask: the scan's mask (same grid); required when the run was trained with
            ``data.mask_image``, ignored otherwise. None, NaN or "" mean no mask.

    Returns:
        ``{"image": MetaTensor[1,*spatial_size] float32 (with applied_operations), "mask"?, "subject": str}``.

    Raises:
        InputError: the file is missing, unreadable or not a single-channel 3D image (names the file),
            or the run masks its images and ``mask`` is missing or does not fit the scan.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: input image not found")
    item: dict[str, Any] = {"image": str(path), "subject": _stem(path)}
    if not isinstance(mask, (str, os.PathLike)) or not str(mask):
        mask = None  # a manifest's empty 'mask' cell reads as NaN
    if needs_mask(data_cfg):
        if mask is None:
            raise InputError(f"{path}: this run was trained on masked or mask-cropped images (data.mask_image, "
                             f"data.mask_crop_margin); give the scan's mask (--mask, or a manifest 'mask' column)")
        mask = Path(mask).expanduser()
        if not mask.is_file():
            raise InputError(f"{mask}: mask not found")
        item["mask"] = str(mask)
    pre = preprocessing(data_cfg, keys=tuple(k for k in ("image", "mask") if k in item))
    try:
        return pre(item)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        inner = _first_input_error(err)
        if inner is not None:
            raise inner from None
        cause = err.__cause__ or err
        name = f"{path} with mask {item['mask']}" if "mask" in item else str(path)
        raise InputError(f"{name}: cannot read image: {type(cause).__name__}: {cause}") from None


def iter_manifest_volumes(manifest: str | Path, data_cfg: Mapping[str, Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(row, preprocessed item)`` for each row of a manifest CSV, one at a time (memory stays flat).

    Each row's ``mask`` column, when there is one, goes to :func:`load_volume`.

    Raises:
        InputError: the manifest is unreadable, or a row's image (or needed mask) is missing or not
            a 3D volume; the message names the manifest, the row and the file.
    """
    from medlatent.transforms.manifest import read_manifest  # local: keeps module import light

    for i, row in read_manifest(manifest).iterrows():
        try:
            item = load_volume(row["image"], data_cfg, mask=row.get("mask"))
        except InputError as err:
            # header = row 1, as a spreadsheet and `medlatent data check` count them
            raise InputError(f"{manifest}: row {i + 2} (subject {row['subject']}): {err}") from None
        yield row, item


def _stem(path: Path) -> str:
    from medlatent.transforms.manifest import subject_from_filename  # local: keeps module import light

    return subject_from_filename(path)


def to_input_geometry(volume: torch.Tensor, reference: Mapping[str, Any], data_cfg: Mapping[str, Any],
                      mode: str = "bilinear") -> MetaTensor:
    """Map a model-space volume back onto the grid and affine of the file ``reference`` came from.

    Inverts the spatial steps recorded on ``reference["image"].applied_operations`` (resize,
    crop, spacing, orientation) with MONAI ``Invertd``. Intensity normalisation is not inverted:
    values stay in model units.

    Args:
        volume: ``[C, D, H, W]`` in model space (same spatial size as ``reference["image"]``).
        reference: an item from :func:`load_volume` or a dataset built by :func:`make_dataset`.
        data_cfg: the ``data`` section used to build ``reference``.
        mode: ``"bilinear"`` (images, maps) or ``"nearest"`` (label maps).

    Returns:
        MetaTensor ``[C, X, Y, Z]`` with the input file's shape and affine.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    ref = reference["image"]
    if not isinstance(ref, MetaTensor) or not ref.applied_operations:
        raise ValueError("reference['image'] must be a MetaTensor with applied_operations (from load_volume)")
    ref = MetaTensor(ref.detach().clone().as_tensor(), meta=copy.deepcopy(ref.meta),
                     applied_operations=copy.deepcopy(ref.applied_operations))
    # the inverting Compose is a new object; clear the recorded transform ids so MONAI matches by class
    reset_ops_id(ref)
    pre = preprocessing(data_cfg, keys=("image",))
    inverter = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=(mode == "nearest"), to_tensor=True)
    pred = volume.detach().as_tensor() if isinstance(volume, MetaTensor) else volume.detach()
    # Invertd reads the operations from the "image" entry only when "pred" is a MetaTensor
    out = inverter({"pred": MetaTensor(pred.float()), "image": ref})["pred"]
    return out
