"""medlatent's data layer: manifests, MONAI pipelines, caching datasets, MedMNIST npz, attributes, phantoms.

It knows nothing about models. It yields dictionaries
``{"image": MetaTensor[1,D,H,W], "mask"?: MetaTensor, "label"?: tensor, "attrs"?: tensor[A], "subject": str}``.
Import the submodules directly (``from medlatent.transforms.pipeline import preprocessing``);
this file imports nothing so that ``import medlatent.transforms.manifest`` stays cheap.
"""
