"""``medlatent report``: self-contained pages checked in a real headless Chromium, outputs on the scan's grid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.commands.cli import main
from medlatent.commands.report import report, top_mass


def _chromium() -> tuple[str, str] | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    return found if all(found) else None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian's packages, installed here when missing and we may (root with apt-get)."""
    if _chromium() is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
                        ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
            subprocess.run(command, capture_output=True, timeout=1200, check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if _chromium() is not None:
                break
    found = _chromium()
    if found is None:
        pytest.skip("Chromium is not installed and could not be (needs root and apt-get): "
                    "apt-get install -y chromium chromium-driver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=found[1]), options=options)
    yield driver
    driver.quit()


def _load(driver, path):
    """Open ``path`` from file:// and return every URL the page requested."""
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    driver.execute_script("return document.readyState")
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.fixture(scope="module")
def label_names(tmp_path_factory):
    path = tmp_path_factory.mktemp("dict") / "phantom_labels.csv"
    pd.DataFrame({"Index": [1, 2, 3], "Name": ["wall", "cavity", "lesion"]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def single(trained_run, phantom_manifest, label_names, tmp_path_factory):
    table = pd.read_csv(phantom_manifest)
    row = table[table["label"] == 1].iloc[0]
    scan, mask = phantom_manifest.parent / row["image"], phantom_manifest.parent / row["mask"]
    out = report(trained_run, scan, labels=mask, label_names=label_names, out=tmp_path_factory.mktemp("r") / "rep")
    return out, scan, str(row["subject"])


def test_top_mass_keeps_the_highest_voxels_up_to_the_share():
    values = np.zeros((10, 10, 10))
    values[0, 0, :5] = [10, 5, 3, 1, 1]  # total 20: 5% is 1, held by the first voxel alone
    kept = top_mass(values, 0.05)
    assert kept.sum() == 1 and kept[0, 0, 0]
    assert top_mass(values, 0.6).sum() == 2  # 10 + 5 = 75% >= 60%
    assert not top_mass(np.zeros((3, 3, 3))).any()


def test_report_outputs_share_the_scans_grid_and_read_back(single):
    import slicerio

    out, scan, subject = single
    folder = out / subject
    reference = nib.load(scan)
    maps = sorted(folder.glob("attention_*.nii.gz"))
    values = [p for p in maps if not p.name.endswith("_top5.nii.gz")]
    labels = [p for p in maps if p.name.endswith("_top5.nii.gz")]
    # attrivae.attention.default_settings: one class map, positive and negative evidence per attribute
    assert {p.name for p in values} == {"attention_class.nii.gz", "attention_cavity_volume_mm3.nii.gz",
                                        "attention_cavity_volume_mm3_negative.nii.gz",
                                        "attention_wall_thickness_mm.nii.gz", "attention_wall_thickness_mm_negative.nii.gz"}
    for path in maps:
        image = nib.load(path)
        assert image.shape == reference.shape and np.allclose(image.affine, reference.affine, atol=1e-4)
    for path in values:
        assert nib.load(path).get_data_dtype() == np.float32
    for value, path in enumerate(sorted(labels), start=1):
        data = np.asarray(nib.load(path).dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, int(data.max())} and data.max() > 0
    segmentation = slicerio.read_segmentation(str(folder / "attention_top5.seg.nrrd"))
    names = slicerio.segment_names(segmentation)
    assert len(names) == len(values) and any(n.startswith("class") for n in names)
    assert all(len(s["color"]) == 3 for s in segmentation["segments"])
    assert "3D Slicer" in (folder / "OPENING.txt").read_text() and "ITK-SNAP" in (folder / "OPENING.txt").read_text()
    assert len((folder / "attention_colours.ctbl").read_text().splitlines()) == 2 + len(values)
    page = (folder / "report.html").read_text()
    assert "Research use only, not for diagnosis." in page
    assert page.count("Spearman with maps of randomised models") == len(values)  # the sanity check, per map
    # the peak is named by the label dictionary (a phantom's voxel is background, wall, cavity or lesion)
    assert any(f"<b>{name}</b>" in page for name in ("background", "wall", "cavity", "lesion"))
    assert "http://" not in page and "https://" not in page


def test_report_pages_load_offline_in_chromium(single, browser):
    out, _, subject = single
    maps = len([p for p in (out / subject).glob("attention_*.png")])
    for page, images in ((out / subject / "report.html", maps + 2), (out / "index.html", 0)):
        urls = _load(browser, page)
        assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
        sizes = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(sizes) == images
        assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
    assert "Research use only" in browser.find_element("tag name", "body").text


def test_report_over_a_manifest_and_a_bad_row(trained_run, phantom_manifest, tmp_path):
    table = pd.read_csv(phantom_manifest).head(2)
    for column in ("image", "mask"):
        table[column] = [str(phantom_manifest.parent / p) for p in table[column]]
    good = tmp_path / "two.csv"
    table.to_csv(good, index=False)
    out = report(trained_run, manifest=good, out=tmp_path / "rep")
    index = (out / "index.html").read_text()
    assert index.count("report.html") == 2
    page = (out / table["subject"][0] / "report.html").read_text()
    assert "as measured" in page and f"{table['cavity_volume_mm3'][0]:.4g}" in page  # from the manifest's column
    bad = table.copy()
    bad.loc[1, "image"] = str(tmp_path / "missing.nii.gz")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code = main(["report", str(trained_run), "--manifest", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "never")])
    assert code == 2 and not (tmp_path / "never").exists()


def test_report_refuses_a_label_map_on_another_grid(trained_run, phantom_manifest, ixi_brain, tmp_path, capsys):
    scan = phantom_manifest.parent / pd.read_csv(phantom_manifest)["image"][0]
    code = main(["report", str(trained_run), str(scan), "--labels", str(ixi_brain), "-o", str(tmp_path / "rep")])
    assert code == 2 and "does not match the scan" in capsys.readouterr().err
