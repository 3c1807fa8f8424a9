"""3D VQ-VAE family: EMA vector quantizer, flat and two-level VQ-VAE, training task, features."""
