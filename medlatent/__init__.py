"""medlatent: learn, inspect and explain latent representations of 3D medical scans.

The shared core both model families stand on: configuration, the 3D conv blocks, the
training engine, reconstruction metrics, run directories and the NIfTI/PNG writers.
"""

__version__ = "0.1.0"
