"""Generalized Ships (paper Eq. 11): how far an ablation turns the dataset's representation subspace.

M is the matrix of last-token final-layer hidden states of all prompts of a dataset (rows =
prompts, shape (P, d)). Its top-r left singular vectors span an r-dimensional subspace of R^P.
The score of an ablation is the sum, in degrees, of the principal angles between that subspace
for the base model and for the ablated model. r = 1 in the paper's reference code.

Everything is computed in float64: the angles of weak heads are small, and the cosine route
alone (arccos of a singular value near 1) loses them to rounding; we take small angles from
their sines instead (Bjorck & Golub 1973, as scipy.linalg.subspace_angles does).
"""

from __future__ import annotations

import math

import torch


def top_left_singular(matrix: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Orthonormal basis (P, r) of the top-r left singular subspace of ``matrix`` (P, d), in float64."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D matrix (prompts, hidden), got shape {tuple(matrix.shape)}")
    _check_rank(r, matrix.shape)
    m = matrix.detach().to(torch.float64)
    if not torch.isfinite(m).all():
        raise ValueError("the hidden-state matrix holds NaN or inf; the model's forward pass overflowed")
    u, _s, _vh = torch.linalg.svd(m, full_matrices=False)  # u: (P, min(P, d))
    return u[:, :r]


def principal_angles(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Principal angles in radians (ascending) between the spans of two orthonormal bases (n, r_a), (n, r_b)."""
    if basis_a.dim() != 2 or basis_b.dim() != 2 or basis_a.shape[0] != basis_b.shape[0]:
        raise ValueError(
            f"bases must be 2-D with the same number of rows, got {tuple(basis_a.shape)} and {tuple(basis_b.shape)}"
        )
    qa = basis_a.to(torch.float64)
    qb = basis_b.to(torch.float64)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # the sine formula below needs the wider basis first
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0).flip(0)  # ascending cosines -> descending angles
    # The part of qb outside span(qa): its singular values are the sines of the same angles.
    residual = qb - qa @ (qa.T @ qb)  # (n, r_b)
    sin = torch.linalg.svdvals(residual).clamp(-1.0, 1.0)  # descending sines -> descending angles
    # Small angles are accurate from their sines, large ones from their cosines.
    angles = torch.where(cos**2 <= 0.5, torch.arccos(cos), torch.arcsin(sin))
    return angles.flip(0)  # ascending


def subspace_angle_score(m_base: torch.Tensor, m_ablated: torch.Tensor, r: int = 1) -> float:
    """Generalized Ships: sum in degrees of the principal angles between the top-r left singular
    subspaces of ``m_base`` and ``m_ablated`` (both (P, d), rows = prompts)."""
    if m_base.shape != m_ablated.shape:
        raise ValueError(
            f"base and ablated hidden-state matrices differ in shape: {tuple(m_base.shape)} vs {tuple(m_ablated.shape)}"
        )
    ua = top_left_singular(m_base, r)
    ub = top_left_singular(m_ablated, r)
    return math.degrees(float(principal_angles(ua, ub).sum()))


def subspace_angle_scores(m_base: torch.Tensor, m_ablated: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Scores (S,) for a stack of ablated matrices (S, P, d) against one base matrix (P, d)."""
    if m_ablated.dim() != 3:
        raise ValueError(f"expected ablated hidden states of shape (sets, prompts, hidden), got {tuple(m_ablated.shape)}")
    ua = top_left_singular(m_base, r)
    out = torch.empty(m_ablated.shape[0], dtype=torch.float64)
    for i in range(m_ablated.shape[0]):
        if m_ablated[i].shape != m_base.shape:
            raise ValueError(f"ablated matrix {i} has shape {tuple(m_ablated[i].shape)}, base {tuple(m_base.shape)}")
        out[i] = math.degrees(float(principal_angles(ua, top_left_singular(m_ablated[i], r)).sum()))
    return out


def _check_rank(r, shape) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"rank r must be a positive integer, got {r!r}")
    if r > min(shape):
        raise ValueError(
            f"rank r={r} exceeds min(prompts, hidden) = {min(shape)} for a hidden-state matrix of shape {tuple(shape)}; "
            "use fewer singular directions or more prompts"
        )
