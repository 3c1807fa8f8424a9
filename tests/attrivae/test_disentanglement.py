import numpy as np

from medlatent.attrivae.disentanglement import disentanglement_report, modularity


def _data(n=400, latent=10, seed=0):
    rng = np.random.default_rng(seed)
    attributes = rng.uniform(0, 1, size=(n, 2))
    latents = rng.normal(size=(n, latent))
    return rng, attributes, latents


def test_monotone_dims_score_high():
    rng, attributes, latents = _data()
    latents[:, 3] = attributes[:, 0] + 0.2 * attributes[:, 0] ** 3  # monotone, mildly nonlinear
    latents[:, 7] = np.tanh(attributes[:, 1])
    report = disentanglement_report(latents, attributes, ["a", "b"])
    assert report["scc"] > 0.99
    assert report["interpretability"] > 0.95
    assert report["mig"] > 0.5 and report["sap"] > 0.5
    assert report["per_attribute"]["a"]["dim"] == 3 and report["per_attribute"]["b"]["dim"] == 7


def test_pure_noise_scores_near_zero():
    _, attributes, latents = _data(n=1000)
    report = disentanglement_report(latents, attributes, ["a", "b"])
    assert report["scc"] < 0.15
    assert report["interpretability"] < 0.02
    assert report["mig"] < 0.05 and report["sap"] < 0.05


def test_modularity_one_for_dedicated_dims_and_low_for_shared():
    dedicated = np.array([[1.0, 0.0], [0.0, 1.0]])
    shared = np.array([[1.0, 1.0]])
    assert np.allclose(modularity(dedicated), 1.0)
    assert np.allclose(modularity(shared), 0.0)


def test_too_few_samples_give_nan_not_an_error():
    report = disentanglement_report(np.zeros((3, 4)), np.zeros((3, 1)), ["a"])
    assert np.isnan(report["mig"]) and np.isnan(report["per_attribute"]["a"]["scc"])
