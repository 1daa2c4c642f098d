"""Edits of the residual stream at the named points of shb.hooks: read it, project a direction out of it,
add a vector to it. Written against the points, so they work for every architecture shb.models.layout
knows (layer skipping is shb.hooks.skip_layers)."""

from __future__ import annotations

import contextlib


def project_out(x, unit):
    """x - (x . r) r for a unit vector r, along the last dimension."""
    r = unit.to(dtype=x.dtype, device=x.device)
    return x - (x @ r).unsqueeze(-1) * r


def directional_ablation(lm, direction):
    """Project ``direction`` (normalised here) out of the residual stream at all positions: from the
    embeddings (``L0.resid_pre``), from every attention output (``L<l>.attn.out``, so the MLP of the same
    layer reads the projected mid-layer residual) and from every layer's output (``L<i>.resid_post``, the
    MLP's write), so no component ever reads it (Arditi et al.: resid_pre, resid_mid and resid_post)."""
    from shb import hooks

    unit = direction / direction.norm()

    def edit(x):
        return project_out(x, unit)

    points = ["L0.resid_pre"] + [f"L{layer}.attn.out" for layer in range(lm.layout.n_layers)]
    points += [f"L{layer}.resid_post" for layer in range(len(lm.layout.layers(lm.model)))]
    return hooks.at(lm, {name: edit for name in points})


def add_direction(lm, layer: int, vector):
    """Activation addition: ``vector`` added to the residual stream at the input of decoder layer ``layer``
    (``L<layer>.resid_pre``), all positions."""
    from shb import hooks

    return hooks.at(lm, {f"L{layer}.resid_pre": lambda x: x + vector.to(dtype=x.dtype, device=x.device)})


@contextlib.contextmanager
def capture_residual(lm):
    """Record the input of every decoder layer (resid_pre) and the last layer's output: a list that
    fills, per forward, with n_layers + 1 tensors (B, T, d)."""
    from shb import hooks

    seen: list = []

    def keep(x):
        seen.append(x.detach())

    n = len(lm.layout.layers(lm.model))
    with hooks.at(lm, {**{f"L{i}.resid_pre": keep for i in range(n)}, f"L{n - 1}.resid_post": keep}):
        yield seen
