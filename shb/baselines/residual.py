"""Hooks on the residual stream between decoder layers: read it, project a direction out of it,
or let a layer pass its input through. Written against a decoder layer's call, so they work for
every architecture shb.models.layout knows (a layer returns a tensor or a tuple whose first item
is the hidden states)."""

from __future__ import annotations

import contextlib


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden):
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    return hidden


def _layer_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def hooks(handles_factory):
    handles = []
    try:
        handles_factory(handles)
        yield handles
    finally:
        for h in handles:
            h.remove()


def project_out(x, unit):
    """x - (x . r) r for a unit vector r, along the last dimension."""
    r = unit.to(dtype=x.dtype, device=x.device)
    return x - (x @ r).unsqueeze(-1) * r


@contextlib.contextmanager
def directional_ablation(lm, direction):
    """Project ``direction`` (normalised here) out of the residual stream at all positions: from the
    embeddings (input of layer 0), from every attention output (so the MLP of the same layer reads
    the projected mid-layer residual) and from every layer's output (the MLP's write), so no
    component ever reads it (Arditi et al.: resid_pre, resid_mid and resid_post)."""
    unit = direction / direction.norm()
    layers = lm.layout.layers(lm.model)

    def attach(handles):
        def pre(module, args, kwargs):
            if args:
                return (project_out(args[0], unit),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = project_out(kwargs["hidden_states"], unit)
            return args, kwargs

        def post(module, args, output):
            return _replace(output, project_out(_hidden(output), unit))

        handles.append(layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        for index, layer in enumerate(layers):
            handles.append(lm.layout.attention(lm.model, index).register_forward_hook(post))
            handles.append(layer.register_forward_hook(post))

    with hooks(attach):
        yield


@contextlib.contextmanager
def add_direction(lm, layer: int, vector):
    """Activation addition: ``vector`` added to the residual stream at the input of ``layer``, all positions."""
    module = lm.layout.layers(lm.model)[layer]

    def attach(handles):
        def pre(mod, args, kwargs):
            if args:
                x = args[0]
                return (x + vector.to(dtype=x.dtype, device=x.device),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            x = kwargs["hidden_states"]
            kwargs["hidden_states"] = x + vector.to(dtype=x.dtype, device=x.device)
            return args, kwargs

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))

    with hooks(attach):
        yield


@contextlib.contextmanager
def skip_layers(lm, layer_ids, alpha: float | None = None):
    """Each listed layer passes its input through unchanged (``alpha`` None: the layer is skipped),
    or writes ``alpha`` times its update (x + alpha (f(x) - x)). The layer still runs (its KV cache
    entries are written but never read by a later layer's output)."""
    layers = lm.layout.layers(lm.model)

    def attach(handles):
        for index in layer_ids:
            def post(module, args, kwargs, output):
                x = _layer_input(args, kwargs)
                if alpha is None:
                    return _replace(output, x)
                y = _hidden(output)
                return _replace(output, x + alpha * (y - x))

            handles.append(layers[index].register_forward_hook(post, with_kwargs=True))

    with hooks(attach):
        yield


@contextlib.contextmanager
def capture_residual(lm):
    """Record the input of every decoder layer (resid_pre) and the last layer's output: a list that
    fills, per forward, with n_layers + 1 tensors (B, T, d)."""
    layers = lm.layout.layers(lm.model)
    seen: list = []

    def attach(handles):
        for i, layer in enumerate(layers):
            def pre(module, args, kwargs, i=i):
                seen.append(_layer_input(args, kwargs).detach())

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

        def last(module, args, output):
            seen.append(_hidden(output).detach())

        handles.append(layers[-1].register_forward_hook(last))

    with hooks(attach):
        yield seen
