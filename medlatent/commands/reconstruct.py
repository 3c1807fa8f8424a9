"""``medlatent reconstruct``: one scan through a trained run, written back in the scan's own geometry."""

from __future__ import annotations

from pathlib import Path

from medlatent.commands.inputs import as_batch, load_input
from medlatent.commands.outputs import check_nifti_name, check_outputs, write_volume
from medlatent.commands.runs import load_run

__all__ = ["reconstruct"]


def reconstruct(run: str | Path, input: str | Path, output: str | Path,  # noqa: A002 - the CLI's name
                mask: str | Path | None = None, overwrite: bool = False) -> Path:
    """Reconstruct ``input`` with the run's model and write it to ``output`` (NIfTI) on the input's grid and affine.

    Intensities stay in model units (e.g. [0, 1] after percentile scaling). ``mask``: the scan's
    mask, needed when the run was trained with ``data.mask_image``.
    """
    check_nifti_name(output)
    check_outputs([output], [input, mask], overwrite, option="OUTPUT")
    state = load_run(run, "reconstruct")
    item = load_input(state, input, mask)
    with state.inference():
        volume = state.family.reconstruct(state.model, as_batch(item, state.device))[0].float()
    mapped = write_volume(volume, item, state.data_cfg, output)
    print(f"wrote {output} ({tuple(mapped.shape[1:])})")
    return Path(output)
