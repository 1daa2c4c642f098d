"""Generalized Ships (principal angles between top-r left singular subspaces) against invariants."""

from __future__ import annotations

import math

import pytest
import torch

from shb.scorers.subspace import (
    principal_angles,
    subspace_angle_score,
    subspace_angle_scores,
    top_left_singular,
)


def _random(p=12, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, d, generator=g, dtype=torch.float64)


def _rotation(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("r", [1, 3])
def test_identical_matrices_score_zero(r):
    m = _random()
    assert subspace_angle_score(m, m.clone(), r=r) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("r", [1, 2])
def test_orthogonal_subspaces_score_90_per_direction(r):
    # Left singular vectors of a are e_0.., of b are e_r..: the subspaces are orthogonal.
    p, d = 6, 4
    a = torch.zeros(p, d, dtype=torch.float64)
    b = torch.zeros(p, d, dtype=torch.float64)
    for i in range(r):
        a[i, i] = 3.0 - i
        b[r + i, i] = 3.0 - i
    assert subspace_angle_score(a, b, r=r) == pytest.approx(90.0 * r, abs=1e-9)


def test_hand_computed_2d_angle():
    # Rank-1 matrices whose left singular vectors are (1, 0) and (cos 30deg, sin 30deg).
    theta = math.radians(30.0)
    a = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    b = torch.outer(u, torch.tensor([0.0, 5.0], dtype=torch.float64))
    assert subspace_angle_score(a, b, r=1) == pytest.approx(30.0, abs=1e-9)


def test_invariant_to_rotating_the_hidden_space_and_scaling():
    # Left singular subspaces do not change under M -> c M Q (Q orthogonal, c > 0).
    a, b = _random(seed=1), _random(seed=2)
    q = _rotation(a.shape[1], seed=3)
    base = subspace_angle_score(a, b, r=2)
    assert base > 1.0  # random matrices: the test below compares a non-trivial number
    assert subspace_angle_score(3.0 * a @ q, 0.5 * b @ q, r=2) == pytest.approx(base, rel=1e-9)


def test_rotating_prompt_space_moves_the_subspace():
    # Rotating the rows of one matrix only (prompt space) changes the score: the scorer can fail.
    a = _random(seed=4)
    rot = _rotation(a.shape[0], seed=5)
    assert subspace_angle_score(a, rot @ a, r=1) > 1.0


def test_sign_of_singular_vectors_is_irrelevant():
    a = _random(seed=6)
    assert subspace_angle_score(a, -a, r=2) == pytest.approx(0.0, abs=1e-6)


def test_small_angles_keep_their_digits():
    # arccos alone returns 0 (or ~1e-6 deg noise) for an angle of 1e-9 rad; the sine route keeps it.
    eps = 1e-9
    qa = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    qb = torch.tensor([[math.cos(eps)], [math.sin(eps)]], dtype=torch.float64)
    assert float(principal_angles(qa, qb)[0]) == pytest.approx(eps, rel=1e-6)


def test_batched_scores_equal_single_scores():
    a = _random(seed=7)
    stack = torch.stack([_random(seed=s) for s in (8, 9, 10)])
    many = subspace_angle_scores(a, stack, r=2)
    assert many.tolist() == pytest.approx([subspace_angle_score(a, m, r=2) for m in stack], abs=1e-12)


def test_bad_input_is_refused_with_a_message():
    a = _random(p=3, d=2)
    with pytest.raises(ValueError, match="rank r=3 exceeds"):
        subspace_angle_score(a, a, r=3)
    with pytest.raises(ValueError, match="differ in shape"):
        subspace_angle_score(a, _random(p=4, d=2))
    with pytest.raises(ValueError, match="positive integer"):
        top_left_singular(a, r=0)
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        subspace_angle_score(a, bad)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_agrees_with_scipy(r):
    linalg = pytest.importorskip("scipy.linalg")
    a, b = _random(seed=11), _random(seed=12)
    ua, ub = top_left_singular(a, r).numpy(), top_left_singular(b, r).numpy()
    expected = math.degrees(float(linalg.subspace_angles(ua, ub).sum()))
    assert subspace_angle_score(a, b, r=r) == pytest.approx(expected, rel=1e-9, abs=1e-9)
