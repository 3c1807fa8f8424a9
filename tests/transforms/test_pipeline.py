"""transforms.pipeline: preprocessing on real files, caching, augmentation, inversion to the input grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import DataLoader, MetaTensor

from medlatent.errors import InputError
from medlatent.transforms.pipeline import augmentation, load_volume, make_dataset, preprocessing, to_input_geometry

SUBJECTS = ("IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236")


@pytest.fixture()
def ixi_records(ixi_dir: Path, tmp_path: Path) -> list[dict]:
    """Three IXI subjects copied to tmp_path (so a test may delete the sources)."""
    records = []
    for i, s in enumerate(SUBJECTS):
        image = shutil.copy(ixi_dir / "T1" / f"{s}_T1.nii.gz", tmp_path)
        mask = shutil.copy(ixi_dir / "dlmuse_seg" / f"{s}_T1_DLMUSE.nii.gz", tmp_path)
        records.append({"image": image, "mask": mask, "label": i % 2,
                        "attrs": np.array([30.0 + i, 1.0], np.float32), "subject": s})
    return records


CFG = {"spatial_size": [48, 48, 36], "intensity": "percentile", "spacing": None, "cache": "memory"}


def test_ixi_comes_out_ras_with_physical_intensities(ixi_dir: Path) -> None:
    path = ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz"
    assert nib.aff2axcodes(nib.load(path).affine) == ("P", "S", "R")  # stored sagittal
    item = preprocessing({**CFG, "intensity": "none"}, keys=("image",))({"image": str(path), "subject": "x"})
    image = item["image"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32 and image.shape == (1, 48, 48, 36)
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    assert image.max() > 255  # uint8 on disk, scl_slope applied
    # RAS reorientation is a permutation/flip of the stored voxels: the mean survives it
    raw = nib.load(path).get_fdata()
    native = preprocessing({**CFG, "intensity": "none", "spatial_fit": "pad_crop", "spatial_size": [90, 120, 120]},
                           keys=("image",))({"image": str(path)})["image"]
    assert native.shape == (1, 90, 120, 120)  # stored (P, S, R) = (120, 120, 90) -> (R, A, S)
    assert float(native.mean()) == pytest.approx(raw.mean(), rel=1e-5)
    assert float(native.max()) == pytest.approx(raw.max(), rel=1e-5)


@pytest.mark.parametrize("intensity", ["percentile", "zscore"])
def test_intensity_modes(ixi_dir: Path, intensity: str) -> None:
    image = load_volume(ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz", {**CFG, "intensity": intensity})["image"]
    if intensity == "percentile":
        assert image.min() == 0 and image.max() == 1
    else:
        inside = image[image != 0]
        assert abs(float(inside.mean())) < 0.1 and float(inside.std()) == pytest.approx(1, abs=0.15)


def test_mask_is_resized_nearest(ixi_records: list[dict]) -> None:
    item = preprocessing(CFG)(ixi_records[0])
    labels = set(torch.unique(item["mask"]).tolist())
    assert {0, 4, 47, 48, 51, 52} <= labels and all(float(v).is_integer() for v in labels)
    assert item["mask"].shape == item["image"].shape
    assert item["label"].dtype == torch.int64 and item["attrs"].dtype == torch.float32


def test_resized_mask_stays_on_the_structures_it_labels(ixi_records: list[dict]) -> None:
    # the lateral ventricles (51, 52) hold CSF, dark on T1: about 0.6 of the brain's mean intensity
    # on the native grid; a mask resampled half a voxel off the image loses most of that contrast
    def ventricle_contrast(cfg: dict) -> float:
        item = preprocessing(cfg)(ixi_records[0])
        image, labels = item["image"][0], item["mask"][0].round().long()
        ventricles = torch.isin(labels, torch.tensor([51, 52]))
        return float(image[ventricles].mean() / image[labels > 0].mean())

    native = ventricle_contrast({**CFG, "spatial_fit": "pad_crop", "spatial_size": [90, 120, 120]})
    resized = ventricle_contrast({**CFG, "spatial_size": [64, 64, 48]})
    assert native < 0.65
    assert resized < native + 0.15  # partial volume at 3.75 mm costs some contrast, misalignment far more


def test_mask_image_strips_everything_outside_the_mask(ixi_records: list[dict]) -> None:
    record = ixi_records[0]
    native = {**CFG, "spatial_fit": "pad_crop", "spatial_size": [90, 120, 120], "intensity": "none"}
    plain = preprocessing(native)(record)
    masked = preprocessing({**native, "mask_image": True})(record)
    brain = masked["mask"] > 0
    assert float(masked["image"][~brain].abs().max()) == 0  # scalp, skull and neck are gone
    assert torch.equal(masked["image"][brain], plain["image"][brain])  # the brain is untouched
    assert float(plain["image"][~brain].sum()) > 0
    # load_volume masks the same way when given the mask, and refuses a masked run's scan without one
    loaded = load_volume(record["image"], {**native, "mask_image": True}, mask=record["mask"])
    assert torch.equal(loaded["image"], masked["image"])
    with pytest.raises(InputError, match="--mask"):
        load_volume(record["image"], {**native, "mask_image": True})
    with pytest.raises(InputError, match="nope.nii.gz: mask not found"):
        load_volume(record["image"], {**native, "mask_image": True}, mask=Path(record["image"]).parent / "nope.nii.gz")


def test_mask_image_needs_a_mask_for_every_record(ixi_records: list[dict]) -> None:
    records = [ixi_records[0], {k: v for k, v in ixi_records[1].items() if k != "mask"}]
    with pytest.raises(InputError, match=f"data.mask_image.*{SUBJECTS[1]}"):
        make_dataset(records, {**CFG, "mask_image": True}, train=False)


def test_rigid_augmentation_keeps_the_mask_volume(ixi_records: list[dict]) -> None:
    # rotation and shift only: a volume attribute measured on the scan stays true for the augmented copy
    # (the brain sits well inside the field of view, so the 4-voxel shifts push none of it out)
    cfg = {**CFG, "augment": ["rigid"]}
    clean = make_dataset(ixi_records[:1], cfg, train=False)[0]["mask"]
    train = make_dataset(ixi_records[:1], cfg, train=True)
    volumes = []
    for seed in range(6):
        torch.manual_seed(seed)
        volumes.append(float((next(iter(DataLoader(train, batch_size=1)))["mask"] > 0).sum()))
    reference = float((clean > 0).sum())
    assert any(v != reference for v in volumes)  # some draws did move the mask
    assert all(abs(v / reference - 1) < 0.03 for v in volumes)


@pytest.mark.parametrize("name, spacing", [("ixi_t1_2mm/T1/IXI012-HH-1211_T1.nii.gz", None),
                                           ("ct_samples/CT_pitch.nii.gz", [1.5, 1.5, 3.0])])
def test_inverts_to_the_input_geometry(data_dir: Path, name: str, spacing) -> None:
    path = data_dir / name
    cfg = {**CFG, "spacing": spacing, "foreground_crop": True}
    ref = load_volume(path, cfg)
    assert ref["image"].shape == (1, 48, 48, 36)
    back = to_input_geometry(ref["image"], ref, cfg)
    original = nib.load(path)
    assert tuple(back.shape) == (1, *original.shape)
    np.testing.assert_allclose(back.affine.numpy(), original.affine, atol=1e-4)
    # the content lands where it came from: the round trip correlates with the (normalised) original
    assert np.corrcoef(back[0].numpy().ravel(), original.get_fdata().ravel())[0, 1] > 0.85
    labels = to_input_geometry((ref["image"] > 0.3).float().repeat(2, 1, 1, 1), ref, cfg, mode="nearest")
    assert labels.shape[0] == 2 and set(torch.unique(labels).tolist()) <= {0.0, 1.0}


def test_skull_stripped_brain_crop_keeps_physical_size_and_inverts(ixi_records: list[dict]) -> None:
    # the IXI Attri-VAE geometry: brain mask -> 3.2 mm voxels -> crop to the brain -> pad to a fixed
    # grid. No resize, so a bigger brain fills more voxels (volume attributes stay visible), and
    # maps in model space still land on the scan's own grid
    cfg = {**CFG, "mask_image": True, "spacing": 3.2, "foreground_crop": True, "spatial_fit": "pad_crop",
           "spatial_size": [48, 64, 48]}
    record = ixi_records[0]
    item = load_volume(record["image"], cfg, mask=record["mask"])
    image = item["image"]
    assert image.shape == (1, 48, 64, 48)
    np.testing.assert_allclose(np.linalg.norm(image.affine.numpy()[:3, :3], axis=0), [3.2] * 3, atol=1e-4)
    seg = nib.load(record["mask"])
    brain_ml = float((np.asarray(seg.dataobj) > 0).sum()) * np.prod(seg.header.get_zooms()[:3]) / 1000
    model_ml = float((item["mask"] > 0).sum()) * 3.2**3 / 1000
    assert model_ml == pytest.approx(brain_ml, rel=0.03)
    assert float(image[0, [0, -1]].abs().sum() + image[0, :, [0, -1]].abs().sum() + image[0, :, :, [0, -1]].abs().sum()) == 0
    back = to_input_geometry(image, item, cfg)
    original = nib.load(record["image"])
    assert tuple(back.shape) == (1, *original.shape)
    np.testing.assert_allclose(back.affine.numpy(), original.affine, atol=1e-4)
    brain = np.asarray(seg.dataobj) > 0
    assert float(back[0].numpy()[~brain].mean()) < 0.05 * float(back[0].numpy()[brain].mean())


def test_oblique_ct_is_resampled_to_the_requested_spacing(data_dir: Path) -> None:
    cfg = {**CFG, "spacing": [2.0, 2.0, 2.0], "spatial_fit": "pad_crop", "spatial_size": [256, 256, 256]}
    image = load_volume(data_dir / "ct_samples" / "CT_pitch.nii.gz", cfg)["image"]
    spacing = np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [2.0, 2.0, 2.0], atol=1e-5)


def test_non_nifti_formats_read_through_simpleitk(ixi_dir: Path, tmp_path: Path) -> None:
    nifti = ixi_dir / "T1" / "IXI012-HH-1211_T1.nii.gz"
    cfg = {**CFG, "intensity": "none"}
    expected = load_volume(nifti, cfg)["image"]
    for suffix in (".mha", ".nrrd"):
        other = tmp_path / f"t1{suffix}"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(nifti)), sitk.sitkFloat32), str(other))
        got = load_volume(other, cfg)["image"]
        np.testing.assert_allclose(got.affine.numpy(), expected.affine.numpy(), atol=1e-3)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-2)


def test_load_volume_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.nii.gz"):
        load_volume(tmp_path / "nope.nii.gz", CFG)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(InputError, match="four_d.nii.gz.*3D"):
        load_volume(four_d, CFG)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="junk.nii.gz"):
        load_volume(junk, CFG)


def test_no_augmentation_is_no_transform() -> None:
    # bad data.* values never reach the pipeline: the data section's schema names them at load
    # (tests/commands/test_registry.py)
    assert augmentation({"augment": []}) is None


def _tensors(dataset) -> list[tuple]:
    return [(d["image"].as_tensor(), d["mask"].as_tensor(), d["label"], d["attrs"], d["subject"]) for d in dataset]


def test_cached_equals_uncached_and_later_epochs_do_no_file_io(ixi_records: list[dict], tmp_path: Path) -> None:
    memory = make_dataset(ixi_records, {**CFG, "cache": "memory"}, train=False)
    disk = make_dataset(ixi_records, {**CFG, "cache": "disk"}, train=False, cache_dir=tmp_path / "cache")
    plain = make_dataset(ixi_records, {**CFG, "cache": "none"}, train=False)
    reference = _tensors(plain)
    first_disk = _tensors(disk)
    for got in (_tensors(memory), first_disk):
        for a, b in zip(got, reference):
            assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4])) and a[4] == b[4]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 3
    for r in ixi_records:  # the sources are gone: a second epoch must not need them
        Path(r["image"]).unlink()
        Path(r["mask"]).unlink()
    for got in (_tensors(memory), _tensors(disk)):
        for a, b in zip(got, reference):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(Exception):
        _tensors(plain)  # the uncached dataset really reads the files
    # the disk cache keeps the inverse information
    assert [op["class"] for op in disk[0]["image"].applied_operations] == ["Orientation", "Resize"]


def test_disk_cache_folder_depends_on_preprocessing(ixi_records: list[dict], tmp_path: Path) -> None:
    make_dataset(ixi_records[:1], {**CFG, "cache": "disk"}, train=False, cache_dir=tmp_path)[0]
    make_dataset(ixi_records[:1], {**CFG, "cache": "disk", "spatial_size": [32, 32, 32]}, train=False,
                 cache_dir=tmp_path)[0]
    assert len(list(tmp_path.glob("pre-*"))) == 2


def test_augmentation_after_cache_reproducible_by_torch_seed(ixi_records: list[dict]) -> None:
    cfg = {**CFG, "augment": ["flip", "affine", "bias_field", "noise"]}
    train = make_dataset(ixi_records, cfg, train=True)
    evaluation = make_dataset(ixi_records, cfg, train=False)

    def epoch(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat([b["image"].as_tensor() for b in DataLoader(train, batch_size=3, num_workers=0)])

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean = torch.stack([d["image"].as_tensor() for d in evaluation])
    assert not torch.equal(a, clean)  # training items are augmented ...
    assert torch.equal(clean, torch.stack([d["image"].as_tensor() for d in evaluation]))  # ... evaluation ones not
    # the cache itself is untouched by augmentation
    assert torch.equal(clean, torch.stack([d["image"].as_tensor() for d in make_dataset(ixi_records, CFG, False)]))


def test_batches_collate_with_the_documented_keys(ixi_records: list[dict]) -> None:
    batch = next(iter(DataLoader(make_dataset(ixi_records, CFG, train=True), batch_size=2)))
    assert set(batch) == {"image", "mask", "label", "attrs", "subject"}
    assert batch["image"].shape == (2, 1, 48, 48, 36) and batch["attrs"].shape == (2, 2)
    assert batch["label"].tolist() == [0, 1] and batch["subject"] == list(SUBJECTS[:2])


def test_array_records_pass_through_with_identity_affine() -> None:
    volume = np.zeros((1, 28, 28, 28), np.float32)
    volume[0, 5:10, 3:6, 20:25] = 255
    item = preprocessing({**CFG, "spatial_size": [28, 28, 28], "intensity": "none"})(
        {"image": volume, "mask": (volume > 127).astype(np.uint8), "subject": "train_0001"})
    assert torch.equal(item["image"].as_tensor(), torch.from_numpy(volume))  # RAS identity: nothing moves
    assert torch.equal(item["image"].affine, torch.eye(4, dtype=torch.float64))
    assert item["mask"].dtype == torch.float32 and item["mask"].sum() == 75


EMIDEC_CFG = {"mask_image": True, "mask_crop_margin": 8, "zoom": [0.5, 0.5, 1.0], "spatial_fit": "pad_crop",
              "spatial_size": [64, 64, 16], "intensity": "percentile", "augment": []}


def _stack(tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return str(path)


def test_mask_crop_and_zoom_keep_the_mask_on_the_image_grid(tmp_path: Path) -> None:
    # a 256x256x6 stack whose "heart" is a 40x30 box at a known place: the crop takes the box + 8,
    # the zoom halves it in-plane, labels stay integers (nearest) on the image's grid
    labels = np.zeros((256, 256, 6), np.uint8)
    labels[100:140, 60:90, 1:5] = 2
    labels[110:130, 70:80, 1:5] = 1
    image = np.where(labels > 0, 100.0 + 50 * (labels == 2), 30.0).astype(np.float32)
    item = preprocessing(EMIDEC_CFG)({"image": _stack(tmp_path, "img", image),
                                      "mask": _stack(tmp_path, "lab", labels), "subject": "s"})
    assert item["image"].shape == item["mask"].shape == (1, 64, 64, 16)
    mask = item["mask"][0]
    assert set(torch.unique(mask).tolist()) == {0, 1, 2}
    # a fixed factor: (40 + 16) / 2 = 28 rows and (30 + 16) / 2 = 23 columns of box, labels 20 x 15 x 4
    assert int((mask > 0).sum()) == pytest.approx(20 * 15 * 4, rel=0.02)
    assert float(item["image"][0][mask == 0].abs().max()) == 0  # mask_image: background gone
    assert float(item["image"][0][mask == 2].mean()) > float(item["image"][0][mask == 1].mean())
    # the box is taken from the mask, so the same mask with a different image gives the same grid
    shifted = preprocessing(EMIDEC_CFG)({"image": _stack(tmp_path, "img2", image * 2),
                                         "mask": _stack(tmp_path, "lab", labels), "subject": "s"})
    assert torch.equal(shifted["mask"], item["mask"])


def test_mask_crop_needs_a_mask(tmp_path: Path) -> None:
    cfg = {**EMIDEC_CFG, "mask_image": False}
    path = _stack(tmp_path, "img", np.ones((32, 32, 4), np.float32))
    with pytest.raises(InputError, match="data.mask_crop_margin"):
        make_dataset([{"image": path, "subject": "s"}], cfg, train=False)
    with pytest.raises(InputError, match="--mask"):
        load_volume(path, cfg)


def test_emidec_cases_come_out_as_heart_boxes(emidec_dir: Path) -> None:
    for case in ("Case_N006", "Case_P001", "Case_P002"):
        record = {"image": str(emidec_dir / "images" / f"{case}.nii.gz"),
                  "mask": str(emidec_dir / "labels" / f"{case}.nii.gz"), "subject": case}
        raw = nib.load(record["mask"]).get_fdata()
        item = preprocessing(EMIDEC_CFG)(record)
        assert item["image"].shape == item["mask"].shape == (1, 64, 64, 16)
        mask = item["mask"][0]
        assert set(torch.unique(mask).tolist()) == set(np.unique(raw).tolist())  # all labels kept, nearest
        # halving in-plane leaves a quarter of the labelled voxels (the largest heart loses a little to the crop)
        assert int((mask > 0).sum()) == pytest.approx((raw > 0).sum() / 4, rel=0.1)
        assert float(item["image"].max()) == pytest.approx(1.0) and float(item["image"][0][mask > 0].mean()) > 0.1


def test_rotate90_keeps_the_mask_and_moves_it(tmp_path: Path) -> None:
    labels = np.zeros((64, 64, 8), np.uint8)
    labels[10:30, 20:25, 2:6] = 1
    record = {"image": _stack(tmp_path, "img", labels.astype(np.float32)), "mask": _stack(tmp_path, "lab", labels),
              "subject": "s"}
    cfg = {"spatial_fit": "pad_crop", "spatial_size": [64, 64, 8], "intensity": "none", "augment": ["rotate90"]}
    train = make_dataset([record], cfg, train=True)
    masks = []
    for seed in range(8):
        torch.manual_seed(seed)
        masks.append(next(iter(DataLoader(train, batch_size=1)))["mask"][0, 0])
    assert all(int(m.sum()) == int(labels.sum()) for m in masks)
    assert any(not torch.equal(m, masks[0]) for m in masks)
    # in-plane only: every draw labels the same slices
    assert all(torch.equal(m.sum((0, 1)), masks[0].sum((0, 1))) for m in masks)
