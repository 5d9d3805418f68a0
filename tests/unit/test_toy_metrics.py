"""Frechet distance and PRDC against cases worked out by hand."""

import numpy as np
import pytest

from tiue_export.errors import InputError
from tiue_export.toy.metrics import (
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_fit,
    knn_radii,
    prdc,
    trace_sqrt_product,
)


# -- Frechet distance ---------------------------------------------------------------------------
def test_fd_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fd_1d_by_hand():
    # real {0, 2}: mean 1, unbiased var 2; fake {1, 5}: mean 3, var 8.
    # d^2 = (1-3)^2 + 2 + 8 - 2 sqrt(16) = 4 + 10 - 8 = 6
    assert frechet_distance([0.0, 2.0], [1.0, 5.0]) == pytest.approx(6.0)


def test_fd_shifted_set_is_squared_shift():
    # Same covariance, so the trace term vanishes and d^2 = |mu1 - mu2|^2 exactly.
    x = np.random.default_rng(1).normal(size=(300, 5)) @ np.random.default_rng(2).normal(size=(5, 5))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_fd_diagonal_gaussians_analytic():
    # Commuting covariances: d^2 = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 = 25 + 1 + 1
    d = frechet_distance_gaussians([0, 0], np.diag([1.0, 4.0]), [3, 4], np.diag([4.0, 9.0]))
    assert d == pytest.approx(27.0)


def test_trace_sqrt_product_matches_scipy_sqrtm_for_non_commuting_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(6)
    expected = float(np.trace(linalg.sqrtm(s1 @ s2)).real)
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-7)


def test_fd_rank_deficient_covariance_is_finite():
    # Fewer samples than dimensions: singular covariances must not produce NaN.
    x = np.random.default_rng(4).normal(size=(5, 16))
    d = frechet_distance(x, x + 1.0)
    assert d == pytest.approx(16.0, rel=1e-6)


def test_gaussian_fit_needs_two_points():
    with pytest.raises(InputError, match="at least 2 feature vectors"):
        gaussian_fit(np.zeros((1, 3)))


def test_fd_dimension_mismatch_is_input_error():
    with pytest.raises(InputError, match="real features have 3 dimensions, fake 4"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 4)))


def test_non_finite_features_are_input_error():
    x = np.zeros((4, 2))
    x[1, 1] = np.nan
    with pytest.raises(InputError, match="fake features contain NaN or inf"):
        frechet_distance(np.ones((4, 2)), x)


# -- PRDC -----------------------------------------------------------------------------------------
def test_knn_radii_by_hand():
    # X = {0, 1, 3, 7}; 2nd nearest other point: 0 -> 3 (1, 3), 1 -> 2 (1, 2), 3 -> 3 (2, 3), 7 -> 6 (4, 6)
    np.testing.assert_allclose(knn_radii(np.array([[0.0], [1.0], [3.0], [7.0]]), k=2), [3, 2, 3, 6])


REAL = [0.0, 1.0, 3.0, 7.0]  # k=2 balls (open): 0:(-3,3)  1:(-1,3)  3:(0,6)  7:(1,13)


def test_prdc_by_hand_clustered_fakes():
    # Y = {10, 11, 12}: each lies only in the ball of 7 (3, 4, 5 < 6), so precision 1 and
    # density 3 / (k M) = 3 / 6. Fake radii (k=2) are 2, 1, 2: no real point is inside one,
    # recall 0. Only real 7 has a fake (10) closer than its radius 6: coverage 1/4.
    m = prdc(REAL, [10.0, 11.0, 12.0], k=2)
    assert (m.precision, m.recall, m.density, m.coverage) == pytest.approx((1.0, 0.0, 0.5, 0.25))


def test_prdc_by_hand_with_an_outlier():
    # Y = {2, 5, 20}: 2 is in all 4 real balls, 5 in the balls of 3 and 7, 20 in none:
    # precision 2/3, density (4 + 2 + 0) / (2 * 3) = 1. The outlier 20 widens the fake radii
    # to 18, 15, 18 so every real point is "recalled" (the failure Naeem et al. point out), and
    # each real point has a fake inside its own ball (2, 1, 1, 2 < 3, 2, 3, 6): coverage 1.
    m = prdc(REAL, [2.0, 5.0, 20.0], k=2)
    assert (m.precision, m.recall, m.density, m.coverage) == pytest.approx((2 / 3, 1.0, 1.0, 1.0))


def test_prdc_balls_are_open():
    # X = {0, 1, 2}, k=1: every radius is 1. Fake 3 is exactly on the ball of 2 (distance 1): not inside.
    # Fake radii (k=1) are 2, 2: only real 2 is strictly inside the ball of 3.
    m = prdc([0.0, 1.0, 2.0], [3.0, 5.0], k=1)
    assert (m.precision, m.recall, m.density, m.coverage) == pytest.approx((0.0, 1 / 3, 0.0, 0.0))


def test_prdc_identical_sets():
    # In general position each real ball holds itself and k-1 other points strictly inside
    # (the k-th neighbour is on the boundary), so density = N k / (k N) = 1.
    x = np.random.default_rng(5).normal(size=(50, 4))
    m = prdc(x, x)
    assert (m.precision, m.recall, m.density, m.coverage) == pytest.approx((1.0, 1.0, 1.0, 1.0))


def test_prdc_disjoint_far_sets_are_zero():
    rng = np.random.default_rng(6)
    m = prdc(rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 100.0)
    assert m.to_dict() == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_same_distribution_is_near_one():
    rng = np.random.default_rng(7)
    m = prdc(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)))
    assert m.precision > 0.9 and m.recall > 0.9 and m.coverage > 0.9
    assert 0.8 < m.density < 1.2


def test_prdc_needs_more_than_k_points():
    with pytest.raises(InputError, match="k=5 nearest neighbours need more than 5 points, got 5"):
        prdc(np.zeros((10, 2)), np.ones((5, 2)))
