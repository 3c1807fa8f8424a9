"""Fixtures shared by the Attri-VAE tests: the phantom subjects of the session's trained run."""

from __future__ import annotations

import pytest
import torch

from medlatent.attrivae.task import plain


@pytest.fixture(scope="session")
def lesion_subjects(trained_run):
    """Label-1 phantoms preprocessed as in training: ``(state, x [N,1,D,H,W], lesion, organ)`` masks as float
    (lesion = mask label 3; organ = wall, cavity and lesion)."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    from medlatent.commands.runs import load_run

    state = load_run(trained_run, "attention")
    records, _ = load_split_records(state.cfg["data"])
    positives = [r for split in records.values() for r in split if r["label"] == 1]
    dataset = make_dataset(positives, {**state.cfg["data"], "cache": "none"}, train=False)
    items = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([plain(i["image"]).float() for i in items])
    masks = torch.stack([plain(i["mask"]).round() for i in items])
    return state, x, (masks == 3).float(), (masks > 0).float()
