"""The HTML of ``medlatent report``: self-contained pages (images inlined as base64 PNG, no scripts, no links out).

A page must open from a USB stick on a hospital workstation without network: every image is a
``data:`` URI, styles are inline, and the only links are relative ones to sibling files. Plain
string templates with ``html.escape`` do it; a template engine would add a dependency for two pages.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["png_data_uri", "subject_page", "index_page", "opening_text", "RESEARCH_ONLY"]

RESEARCH_ONLY = "Research use only, not for diagnosis."
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; font-weight: bold; }
img { max-width: 100%; } .small { color: #555; font-size: 0.9em; }
"""


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) and math.isfinite(value) else "unknown"


def _percent(value: float) -> str:
    return f"{value:.0f}th" if isinstance(value, (int, float)) and math.isfinite(value) else "unknown"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n<p class=\"warn\">{RESEARCH_ONLY}</p>\n{body}\n"
            f"<p class=\"warn\">{RESEARCH_ONLY}</p></body></html>\n")


def _probability_text(probability: Mapping[str, Any] | None) -> str:
    if probability is None:
        return "this run has no classifier"
    return (f"P({_e(probability.get('label') or 'label')} = {_e(probability['class'])}) = "
            f"{probability['probability']:.3f}")


def subject_page(summary: Mapping[str, Any]) -> str:
    """One subject's page from the summary ``commands.report`` builds (maps, attributes, strips)."""
    subject = summary["subject"]
    parts = [f"<h1>{_e(subject)}</h1>",
             f"<p class=\"small\">scan: {_e(summary['source'] or '(from the manifest)')}<br>model run: "
             f"{_e(summary['run'])}</p>",
             f"<h2>Class</h2><p>{_probability_text(summary['probability'])}</p>"]
    parts.append("<h2>Attention maps</h2><p class=\"small\">Each map is shown in three planes through its peak, "
                 "over the scan, with its colour bar (0: no evidence, 1: the map's maximum). Beside this page: each "
                 "map as NIfTI on the scan's grid, its top 5% of mass as a label map, and all of them as one 3D "
                 "Slicer segmentation (OPENING.txt says how to open them).</p>")
    for m in summary["maps"]:
        spec = m["spec"]
        peak = ", ".join(f"{v:.1f}" for v in m["peak_mm"])
        structure = m["structure"]
        where = (f"; in <b>{_e(structure['name'])}</b> (label {structure['value']})" if structure is not None
                 else "; no label map given")
        parts.append(
            f"<h3>{_e(spec.title)}</h3>"
            f"<table><tr><th>method</th><td>{_e(m['describe'])}</td></tr>"
            f"<tr><th>peak</th><td>({peak}) mm, scanner (RAS) coordinates; voxel {m['peak_voxel']}{where}</td></tr>"
            f"<tr><th>sanity check</th><td>{_e(m['sanity'])}</td></tr>"
            f"<tr><th>files</th><td>{_e(m['nifti'])}, {_e(m['label_file'])} (label {m['label_value']})</td></tr>"
            f"</table><img alt=\"attention map of {_e(spec.title)}\" src=\"{png_data_uri(m['png'])}\">")
    parts.append("<h2>Attributes</h2><table><tr><th>attribute</th><th>latent z</th><th>as encoded</th>"
                 "<th>percentile (training)</th><th>as measured</th><th>percentile (training)</th></tr>")
    for a in summary["attributes"]:
        encoded = {"low": "&le; ", "high": "&ge; "}.get(a["clipped"], "") + _number(a["encoded"])
        parts.append(f"<tr><td>{_e(a['name'])}</td><td>{a['z']:+.2f}</td><td>{encoded}</td>"
                     f"<td>{_percent(a['encoded_percentile'])}</td><td>{_number(a['measured'])}</td>"
                     f"<td>{_percent(a['measured_percentile'])}</td></tr>")
    parts.append("</table><p class=\"small\">As encoded: the attribute's latent value read through a linear fit on "
                 "the training split, clipped to the range seen in training.</p>")
    parts.append("<h2>Traversals</h2><p class=\"small\">The attribute's latent dimension moved from -3 to 3, all "
                 "else kept; each step decoded and labelled by the same clipped fit.</p>")
    for a in summary["attributes"]:
        parts.append(f"<img alt=\"traversal of {_e(a['name'])}\" src=\"{png_data_uri(a['strip'])}\">")
    return _page(f"{subject}: medlatent report", "\n".join(parts))


def index_page(rows: Sequence[Mapping[str, Any]], run: str) -> str:
    """One row per subject: its class probability, encoded attributes and a relative link to its page."""
    names = [a["name"] for a in rows[0]["attributes"]] if rows else []
    head = "".join(f"<th>{_e(n)} (encoded)</th>" for n in names)
    lines = [f"<h1>medlatent report: {len(rows)} subject(s)</h1><p class=\"small\">model run: {_e(run)}</p>",
             f"<table><tr><th>subject</th><th>class probability</th>{head}<th>page</th></tr>"]
    for row in rows:
        cells = "".join(f"<td>{_number(a['encoded'])}</td>" for a in row["attributes"])
        lines.append(f"<tr><td>{_e(row['subject'])}</td><td>{_probability_text(row['probability'])}</td>{cells}"
                     f"<td><a href=\"{_e(row['page'])}\">open</a></td></tr>")
    lines.append("</table>")
    return _page("medlatent report", "\n".join(lines))


def opening_text(subject: str, source: Any, files: Sequence[tuple[str, str]]) -> str:
    """How to open the maps over the scan in 3D Slicer and ITK-SNAP."""
    listed = "\n".join(f"  {nifti}  (map, 0..1)    {labels}  (top 5% of its mass)" for nifti, labels in files)
    scan = source or "the subject's scan"
    return f"""Attention maps of {subject}. {RESEARCH_ONLY}

Files (all on the grid and affine of {scan}):
{listed}
  attention_top5.seg.nrrd    every top-5% region as a named, coloured 3D Slicer segment
  attention_colours.ctbl     3D Slicer colour table of the label values
  attention_labels_itksnap.txt  ITK-SNAP label description of the same values

3D Slicer (5.x)
  1. File > Add Data: choose {scan}, then one attention_<target>.nii.gz; OK.
  2. In the slice viewers' bar set the background to the scan and the foreground to the map; set the
     foreground opacity to about 0.4 (Volumes module: colour lookup "ColdToHotRainbow" or "Inferno").
  3. File > Add Data: attention_top5.seg.nrrd. It opens as a segmentation with one named, coloured segment
     per map (Segmentations module shows them; "Show 3D" renders them).
  4. A label map instead: Add Data, attention_<target>_top5.nii.gz, tick "LabelMap"; load
     attention_colours.ctbl the same way and pick it as the label map's colour table.

ITK-SNAP (3.8 or 4.x)
  1. File > Open Main Image: {scan}.
  2. File > Add Another Image: attention_<target>.nii.gz; display it as an overlay (semi-transparent,
     colour map "Jet" or "Hot").
  3. Segmentation > Open Segmentation: attention_<target>_top5.nii.gz; then Segmentation > Import Label
     Descriptions: attention_labels_itksnap.txt, so the labels carry their names and colours.
"""
