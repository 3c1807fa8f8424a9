"""Attri-VAE: attribute-regularised 3D variational autoencoder with a classifier head.

Cetin et al., "Attri-VAE: attribute-based interpretable representations of medical images
with variational autoencoders", CMIG 2023, with the attribute-regularisation loss of Pati &
Lerch (AR-VAE, 2020). Import the submodules directly (``from medlatent.attrivae.model import AttriVAE``);
``attrivae.family`` is what the ``medlatent`` CLI calls.
"""
