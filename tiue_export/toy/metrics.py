"""Distribution metrics over feature sets: Frechet distance ("FID") and precision/recall/density/coverage.

Pure numpy functions over ``(N, D)`` float arrays of features (here: the toy classifier's
penultimate layer). Nothing here knows about images or models.

References:
    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ..." (FID), with the Frechet
    distance between Gaussians from Dowson & Landau 1982.
    Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models" (PRDC).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

#: Naeem et al. use k=5 nearest neighbours for the real-manifold balls.
NEAREST_K = 5


def _as_features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:  # a set of scalars is a set of 1-D points
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise InputError(f"{name} features must be a non-empty (N, D) array, got shape {np.shape(x)}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} features contain NaN or inf")
    return a


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (D, D) of an (N, D) feature set, as FID fits them."""
    x = _as_features(features, "the")
    if x.shape[0] < 2:
        raise InputError("a Gaussian fit needs at least 2 feature vectors")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2): same eigenvalues, and the right side is symmetric PSD."""
    r = _psd_sqrt(sigma1)
    w = np.linalg.eigvalsh(r @ sigma2 @ r)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (Dowson & Landau 1982; FID, Heusel et al. Eq. 6)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"Gaussians of different dimensions: mean {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(d, 0.0)  # round-off can make identical fits a hair negative


def frechet_distance(real, fake) -> float:
    """Frechet distance between Gaussian fits of two (N, D) feature sets (our "FID")."""
    r, f = _as_features(real, "real"), _as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise InputError(f"real features have {r.shape[1]} dimensions, fake {f.shape[1]}")
    return frechet_distance_gaussians(*gaussian_fit(r), *gaussian_fit(f))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), via |a|^2 + |b|^2 - 2ab clipped at 0."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def knn_radii(x: np.ndarray, k: int = NEAREST_K) -> np.ndarray:
    """NND_k(x_i): distance from each point to its k-th nearest other point in the same set."""
    if x.shape[0] <= k:
        raise InputError(f"k={k} nearest neighbours need more than {k} points, got {x.shape[0]}")
    d = pairwise_distances(x, x)
    # Column 0 of the sorted row is the point itself (distance 0), so the k-th neighbour is column k.
    return np.sort(d, axis=1)[:, k]


@dataclass(frozen=True)
class PRDC:
    """Precision, recall, density and coverage of a fake set against a real set (Naeem et al. 2020)."""

    precision: float
    recall: float
    density: float
    coverage: float

    def to_dict(self) -> dict:
        return asdict(self)


def prdc(real, fake, k: int = NEAREST_K) -> PRDC:
    """Naeem et al. 2020, Eq. 1-4, with k-NN balls B(x, NND_k(x)) as open balls (distance < radius).

    precision = mean_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]          (Eq. 1, Kynkaanniemi et al.)
    recall    = mean_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]          (Eq. 2)
    density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]        (Eq. 3)
    coverage  = mean_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]          (Eq. 4)

    The strict inequality matches the authors' reference code, so numbers are comparable.
    """
    r, f = _as_features(real, "real"), _as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise InputError(f"real features have {r.shape[1]} dimensions, fake {f.shape[1]}")
    real_radii = knn_radii(r, k)
    fake_radii = knn_radii(f, k)
    d = pairwise_distances(r, f)  # (N real, M fake)
    in_real_ball = d < real_radii[:, None]
    return PRDC(
        precision=float(in_real_ball.any(axis=0).mean()),
        recall=float((d < fake_radii[None, :]).any(axis=1).mean()),
        density=float(in_real_ball.sum(axis=0).mean() / k),
        coverage=float((d.min(axis=1) < real_radii).mean()),
    )


def cluster_bootstrap(cluster_means, reps: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of equal-size clusters' means and its percentile bootstrap interval, resampling whole
    clusters with replacement (the cluster bootstrap; Field & Welsh 2007): images of one caption
    are not independent, so captions, not images, are the units resampled.

    Returns:
        ``(mean, low, high)``; one cluster gives ``(mean, mean, mean)``.
    """
    x = np.asarray(cluster_means, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise InputError("cluster_bootstrap needs a non-empty 1-D array of finite cluster means")
    if not 0 < level < 1 or reps < 1:
        raise InputError(f"cluster_bootstrap needs 0 < level < 1 and reps >= 1, got {level}, {reps}")
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return float(x.mean()), float(low), float(high)
