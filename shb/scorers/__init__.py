"""Scores of one ablation against the base model.

- ``shb.scorers.kl``: Ships, per-prompt KL(p_base || p_ablated) at the last position (Eq. 9).
- ``shb.scorers.subspace``: generalized Ships, principal angles between last-token subspaces (Eq. 11).
"""
