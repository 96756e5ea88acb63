"""The Student-t mixture (CXR-CML's clustering): robust to outliers where a Gaussian mixture is not, EM never
lowers the likelihood, and ν → ∞ is the Gaussian mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from radclip.core.mixtures import StudentTMixture, cluster_embeddings, fit_student_t_mixture

CENTRES = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])


def _toy(seed: int = 0, outliers: int = 30) -> np.ndarray:
    """Three tight 2-D clusters (σ 0.5, 200 points each) and ``outliers`` points spread uniformly around them."""
    rng = np.random.default_rng(seed)
    clusters = [centre + 0.5 * rng.standard_normal((200, 2)) for centre in CENTRES]
    return np.concatenate([*clusters, rng.uniform(-6, 10, (outliers, 2))])


def _worst_mean_error(mixture: StudentTMixture) -> float:
    return max(float(np.linalg.norm(mixture.means - centre, axis=1).min()) for centre in CENTRES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_t_mixture_recovers_the_means_where_outliers_pull_a_gaussian_mixture_off(seed):
    points = _toy(seed)
    robust = fit_student_t_mixture(points, 3, nu=4.0, seed=0)
    gaussian = fit_student_t_mixture(points, 3, nu=math.inf, seed=0)
    assert _worst_mean_error(robust) < 0.1
    assert _worst_mean_error(gaussian) > 0.15  # the same data, the same start: the outliers drag it
    assert robust.converged and np.isclose(robust.weights.sum(), 1.0)


@pytest.mark.parametrize("nu", [2.0, 4.0, math.inf])
def test_em_never_lowers_the_log_likelihood(nu):
    fit = fit_student_t_mixture(_toy(), 3, nu=nu, seed=0)
    steps = np.diff(fit.log_likelihoods)
    assert len(fit.log_likelihoods) >= 2
    assert (steps >= -1e-8 * abs(fit.log_likelihoods[0])).all(), steps


def test_a_very_large_nu_gives_the_gaussian_responsibilities():
    points = _toy()
    gaussian = fit_student_t_mixture(points, 3, nu=math.inf, seed=0)
    same_parameters = StudentTMixture(gaussian.weights, gaussian.means, gaussian.variances, 1e8)
    np.testing.assert_allclose(same_parameters.responsibilities(points), gaussian.responsibilities(points), atol=1e-3)
    fitted = fit_student_t_mixture(points, 3, nu=1e8, seed=0)
    np.testing.assert_allclose(fitted.responsibilities(points), gaussian.responsibilities(points), atol=1e-3)
    # The Gaussian log-density against scipy's, an independent implementation.
    from scipy.stats import multivariate_normal

    joint, _ = gaussian.component_log_densities(points[:5])
    expected = [np.log(gaussian.weights[k]) + multivariate_normal(gaussian.means[k], np.diag(gaussian.variances[k]))
                .logpdf(points[:5]) for k in range(3)]
    np.testing.assert_allclose(joint, np.stack(expected, axis=1), rtol=1e-10)


def test_the_t_log_density_matches_scipy():
    from scipy.stats import multivariate_t

    mixture = StudentTMixture(np.array([0.3, 0.7]), np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]]),
                              np.array([[1.0, 0.5, 2.0], [0.3, 1.5, 0.8]]), 4.0)
    points = np.random.default_rng(3).standard_normal((6, 3))
    joint, _ = mixture.component_log_densities(points)
    expected = [np.log(mixture.weights[k]) + multivariate_t(mixture.means[k], np.diag(mixture.variances[k]), df=4.0)
                .logpdf(points) for k in range(2)]
    np.testing.assert_allclose(joint, np.stack(expected, axis=1), rtol=1e-10)


def test_fits_are_deterministic_and_bad_input_is_refused():
    points = _toy()
    first, second = (fit_student_t_mixture(points, 3, nu=4.0, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.means, second.means)
    assert first.log_likelihoods == second.log_likelihoods
    with pytest.raises(ValueError, match="need an \\(N, d\\) array with N ≥ 3 components"):
        fit_student_t_mixture(points[:2], 3)
    with pytest.raises(ValueError, match="nu must be positive"):
        fit_student_t_mixture(points, 3, nu=0.0)


def test_embeddings_cluster_through_their_principal_components():
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((4, 128))
    truth = np.repeat(np.arange(4), 60)
    embeddings = directions[truth] + 0.3 * rng.standard_normal((240, 128))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    clustering = cluster_embeddings(embeddings, 4, nu=4.0, pca_dims=16, seed=0)
    assert clustering.components_kept == 16 and 0 < clustering.explained_variance <= 1
    assert adjusted_rand_score(truth, clustering.labels) == 1.0
