"""Mixtures of Student-t distributions (CXR-CML's clustering of the latent space), fitted by EM.

CXR-CML (``shared/papers/003``, eq. 1–2) clusters the visual embeddings with a Gaussian mixture refined by a mixture
of multivariate Student-t distributions with ν degrees of freedom: heavy tails let a rare class's few, scattered
points keep a component of their own instead of being absorbed (or dragging a Gaussian's mean off). The paper leaves
the fitting open; the choices here:

* **EM, initialised from scikit-learn's** ``GaussianMixture`` (k-means++-seeded, ``seed``): the t-mixture refines the
  Gaussian solution, as the paper describes. Every EM step is exact for fixed ν (Peel & McLachlan, 2000): the
  E-step gives responsibilities τ_ik ∝ π_k · t(z_i | μ_k, Σ_k, ν) and the latent precision weights
  u_ik = (ν + d) / (ν + δ²_ik) (δ² the squared Mahalanobis distance); the M-step weights each point by τ_ik · u_ik
  for the means and scatter and by τ_ik for the mixing weights and the scatter's normaliser, so the log-likelihood
  never decreases. ν is fixed (a param, the paper's ν = 4), not estimated.
* **Diagonal covariances.** With a few thousand points in 128–768 dimensions a full Σ_k per component has more
  parameters than there are points per rare component; :func:`cluster_embeddings` first projects onto the leading
  principal components (a few dozen dimensions hold most of the variance of CLIP embeddings), where a diagonal
  Σ_k is the usual and well-conditioned choice.
* ``nu=math.inf`` is the Gaussian mixture (u ≡ 1): the same code path is the ``gauss`` arm's clustering.
* Deterministic: the same data, components, ν and seed give the same fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln, logsumexp

VARIANCE_FLOOR = 1e-6  # added to every variance (scikit-learn's reg_covar): a component on one point stays finite


@dataclass(frozen=True)
class StudentTMixture:
    """A fitted mixture: ``weights`` (K,), ``means`` (K, d), diagonal ``variances`` (K, d), degrees of freedom ``nu``
    (``math.inf``: Gaussian); the EM trace ``log_likelihoods`` (one per iteration, the initial fit first)."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    nu: float
    log_likelihoods: list[float] = field(default_factory=list)
    converged: bool = False

    def component_log_densities(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``log π_k + log t(z_i | k)`` (N, K) and the squared Mahalanobis distances δ² (N, K)."""
        points = np.asarray(points, dtype=np.float64)
        dims = points.shape[1]
        squared = (((points[:, None, :] - self.means[None]) ** 2) / self.variances[None]).sum(axis=2)
        log_det = np.log(self.variances).sum(axis=1)  # (K,)
        if math.isinf(self.nu):
            log_density = -0.5 * (dims * math.log(2 * math.pi) + log_det[None] + squared)
        else:
            nu = self.nu
            log_density = (gammaln((nu + dims) / 2) - gammaln(nu / 2) - 0.5 * dims * math.log(nu * math.pi)
                           - 0.5 * log_det[None] - 0.5 * (nu + dims) * np.log1p(squared / nu))
        return np.log(self.weights)[None] + log_density, squared

    def responsibilities(self, points: np.ndarray) -> np.ndarray:
        """τ (N, K): each point's posterior over the components."""
        joint, _ = self.component_log_densities(points)
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def predict(self, points: np.ndarray) -> np.ndarray:
        """The most responsible component of each point (the pseudo-labels)."""
        return self.responsibilities(points).argmax(axis=1)

    def log_likelihood(self, points: np.ndarray) -> float:
        joint, _ = self.component_log_densities(points)
        return float(logsumexp(joint, axis=1).sum())


def fit_student_t_mixture(points: np.ndarray, components: int, *, nu: float = 4.0, seed: int = 0,
                          max_iter: int = 100, tol: float = 1e-6) -> StudentTMixture:
    """EM for a diagonal-covariance mixture of ``components`` Student-t distributions with ``nu`` degrees of freedom,
    started from scikit-learn's Gaussian mixture; stops when the log-likelihood gains less than ``tol`` per point."""
    from sklearn.mixture import GaussianMixture

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) < components:
        raise ValueError(f"need an (N, d) array with N ≥ {components} components, got shape {points.shape}")
    if not (nu > 0):
        raise ValueError(f"nu must be positive (math.inf: Gaussian), got {nu}")
    gaussian = GaussianMixture(components, covariance_type="diag", reg_covar=VARIANCE_FLOOR, random_state=seed)
    gaussian.fit(points)
    mixture = StudentTMixture(gaussian.weights_, gaussian.means_, gaussian.covariances_, float(nu))
    trace = [mixture.log_likelihood(points)]
    dims, converged = points.shape[1], False
    for _ in range(max_iter):
        joint, squared = mixture.component_log_densities(points)
        tau = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))  # (N, K)
        u = np.ones_like(squared) if math.isinf(nu) else (nu + dims) / (nu + squared)
        mass = tau.sum(axis=0)  # (K,)
        weighted = tau * u
        means = (weighted.T @ points) / weighted.sum(axis=0)[:, None]
        scatter = np.einsum("nk,nkd->kd", weighted, (points[:, None, :] - means[None]) ** 2)
        variances = scatter / mass[:, None] + VARIANCE_FLOOR
        mixture = StudentTMixture(mass / len(points), means, variances, float(nu))
        trace.append(mixture.log_likelihood(points))
        if trace[-1] - trace[-2] < tol * len(points):
            converged = True
            break
    return StudentTMixture(mixture.weights, mixture.means, mixture.variances, float(nu), trace, converged)


@dataclass(frozen=True)
class Clustering:
    """Pseudo-labels of embeddings: the mixture fitted on their ``projection`` (principal components)."""

    labels: np.ndarray  # (N,) component per point
    mixture: StudentTMixture
    components_kept: int  # principal components the mixture was fitted on
    explained_variance: float  # their share of the embeddings' variance


def cluster_embeddings(embeddings: np.ndarray, components: int, *, nu: float = 4.0, pca_dims: int = 32,
                       seed: int = 0, max_iter: int = 100) -> Clustering:
    """Project ``embeddings`` (N, D) onto their ``pca_dims`` leading principal components (fewer when N or D is
    smaller) and fit the t-mixture there; the pseudo-labels are the most responsible components."""
    from sklearn.decomposition import PCA

    embeddings = np.asarray(embeddings, dtype=np.float64)
    kept = max(1, min(pca_dims, embeddings.shape[1], len(embeddings) - 1))
    pca = PCA(n_components=kept, random_state=seed)
    projected = pca.fit_transform(embeddings)
    mixture = fit_student_t_mixture(projected, components, nu=nu, seed=seed, max_iter=max_iter)
    return Clustering(mixture.predict(projected), mixture, kept, float(pca.explained_variance_ratio_.sum()))
