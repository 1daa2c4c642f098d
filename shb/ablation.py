"""Head ablation as hooks on stock transformers modules, and the same edits baked into weights.

Kinds (DESIGN.md section 3):
- undifferentiated: the query of the head times epsilon (bias included); at epsilon = 0
  the head attends uniformly over its (unpadded, in-window) causal prefix.
  `site="k"` scales the head's key instead (refused under grouped-query attention).
- scaling: the head's output (its slice of the output projection's input) times epsilon.
- mean: the head's query (site "q", default) or output (site "output") replaced by the
  mean over all heads of its layer.
- zero: the head's output set to zero.

Query/key edits hook the projection's *output*. For rotary models scaling or averaging
the query before the rotation equals doing it after, because the rotation is linear and
the same for every head at a position; so hooking the projection is exact.

The hooks never fork attention code: they only rescale or replace slices of a
projection's output (or of the output projection's input), located by
`shb.models.layout`. One hook per touched layer applies a (B, H) multiplier and a
(B, H) mean mask, so `ablate_rows` puts many different head sets in one batch.

Importable without torch (KINDS, parse_heads, format_head).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

KINDS: dict[str, str] = {
    "undifferentiated": "query (or key, site='k') of the head times epsilon: attention flattened (paper Eq. 7)",
    "scaling": "head output (its slice of the output-projection input) times epsilon (paper Eq. 8)",
    "mean": "head query (site='q') or output (site='output') replaced by the mean over the layer's heads",
    "zero": "head output set to zero (classic head pruning)",
}

# kind -> (default site, allowed sites)
_SITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "undifferentiated": ("q", ("q", "k")),
    "scaling": ("output", ("output",)),
    "mean": ("q", ("q", "output")),
    "zero": ("output", ("output",)),
}

_HEAD_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_heads(text: str | Iterable) -> list[tuple[int, int]]:
    """"2-26,3-8" -> [(2, 26), (3, 8)]. Also accepts an iterable of "l-h" strings or (l, h) pairs."""
    if isinstance(text, str):
        items: list = [t for t in text.split(",") if t.strip()]
    else:
        items = list(text)
    heads = []
    for item in items:
        if isinstance(item, str):
            m = _HEAD_RE.match(item)
            if not m:
                raise ValueError(f"bad head {item!r}: expected 'layer-head' with 0-indexed integers, e.g. '2-26'")
            heads.append((int(m.group(1)), int(m.group(2))))
        else:
            try:
                layer, head = item
                heads.append((int(layer), int(head)))
            except (TypeError, ValueError):
                raise ValueError(f"bad head {item!r}: expected a (layer, head) pair or 'layer-head'") from None
    return heads


def format_head(head: tuple[int, int]) -> str:
    """(2, 26) -> "2-26"."""
    layer, h = head
    return f"{int(layer)}-{int(h)}"


def _resolve(model: Any):
    """(transformers model, layout) from a bare model or an object with `.model` (LoadedModel)."""
    from shb.models.layout import detect

    hf = model if hasattr(model, "config") and hasattr(model, "parameters") else getattr(model, "model", None)
    if hf is None or not hasattr(hf, "config"):
        raise TypeError(f"expected a transformers model or a LoadedModel, got {type(model).__name__}")
    layout = getattr(model, "layout", None)
    if layout is None:
        layout = getattr(hf, "_shb_layout", None)
        if layout is None:
            layout = detect(hf)
            hf._shb_layout = layout  # detect() counts parameters; do it once per model
    return hf, layout


def _check_kind_site(kind: str, site: str | None, layout) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; known kinds: {', '.join(KINDS)}")
    default, allowed = _SITES[kind]
    site = default if site is None else site
    if site not in allowed:
        raise ValueError(f"ablation kind {kind!r} does not take site={site!r}; allowed: {', '.join(allowed)}")
    if site == "k" and layout.n_kv_heads != layout.n_heads:
        raise ValueError(
            f"site='k' is not defined under grouped-query attention ({layout.geometry()}): "
            f"scaling a key would ablate all {layout.group_size} query heads of its kv group. Use site='q'."
        )
    return site


def _check_heads(heads: Iterable, layout) -> list[tuple[int, int]]:
    checked = []
    n_index = layout.n_heads  # with site='k' this is also n_kv_heads (checked: no GQA)
    for layer, head in parse_heads(heads):
        if not (0 <= layer < layout.n_layers) or not (0 <= head < n_index):
            raise ValueError(
                f"head {format_head((layer, head))} is out of range for {layout.geometry()} "
                f"(layers 0-{layout.n_layers - 1}, heads 0-{n_index - 1})"
            )
        checked.append((int(layer), int(head)))
    return sorted(set(checked))


def _slice_for(layout, kind: str, site: str):
    """The ProjSlice a kind/site edits, and whether it is on the module's output (else input)."""
    if site == "q":
        return layout.query, True
    if site == "k":
        return layout.key, True
    return layout.output, False


def _head_view(t, proj):
    """(B, T, H, D) view of the per-head features of t (B, T, F) that `proj` locates."""
    b, n = t.shape[0], t.shape[1]
    block = t[..., proj.start : proj.end]  # (B, T, H * stride)
    heads = block.view(b, n, proj.n_heads, proj.head_stride)  # (B, T, H, stride)
    return heads[..., proj.inner : proj.inner + proj.head_dim]  # (B, T, H, D)


def _edit(x, proj, scale, mean_mask):
    """Edited copy of x (B, T, F): per-head features times scale (R, H), mean where mean_mask (R, H).

    R is 1 (the same heads in every row) or B (ablate_rows). Rows whose scale is 1 and mask
    False are bit-identical to the input (x * 1.0 == x). The new values are computed from x
    and written into a copy, so autograd through the hook stays valid.
    """
    import torch

    if x.dim() != 3:
        raise ValueError(f"expected a (batch, seq, features) activation, got shape {tuple(x.shape)}")
    if scale.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"ablate_rows was given {scale.shape[0]} head sets but the batch has {x.shape[0]} rows; "
            "the batch size must equal len(head_sets)"
        )
    x = x.contiguous()  # view() in _head_view needs a dense last dim
    src = _head_view(x, proj)  # (B, T, H, D)
    s = scale.to(device=x.device, dtype=x.dtype)[:, None, :, None]  # (R, 1, H, 1)
    new = src * s
    if mean_mask is not None:
        mean = src.mean(dim=2, keepdim=True)  # (B, T, 1, D) mean over the layer's heads
        new = torch.where(mean_mask.to(x.device)[:, None, :, None], mean, new)
    out = x.clone()
    _head_view(out, proj).copy_(new)
    return out


def _layer_tables(layout, head_sets: Sequence[Sequence[tuple[int, int]]], kind: str, epsilon: float, proj):
    """{layer: (scale (R, H), mean_mask (R, H) or None)} for the layers any row touches."""
    import torch

    rows = len(head_sets)
    touched = sorted({layer for hs in head_sets for layer, _ in hs})
    tables = {}
    for layer in touched:
        scale = torch.ones(rows, proj.n_heads, dtype=torch.float32)
        mask = torch.zeros(rows, proj.n_heads, dtype=torch.bool) if kind == "mean" else None
        for r, hs in enumerate(head_sets):
            for hl, h in hs:
                if hl != layer:
                    continue
                if kind == "mean":
                    mask[r, h] = True
                else:
                    scale[r, h] = 0.0 if kind == "zero" else epsilon
        tables[layer] = (scale, mask)
    return tables


class AblationHooks:
    """Handle yielded by `ablate`/`ablate_rows`: how many hooks are attached, on which layers."""

    def __init__(self):
        self.handles: list = []
        self.layers: list[int] = []

    @property
    def n_hooks(self) -> int:
        return len(self.handles)

    def remove(self):
        while self.handles:
            self.handles.pop().remove()


@contextlib.contextmanager
def _hooked(model, head_sets, kind, epsilon, site) -> Iterator[AblationHooks]:
    hf, layout = _resolve(model)
    site = _check_kind_site(kind, site, layout)
    head_sets = [_check_heads(hs, layout) for hs in head_sets]
    proj, on_proj_out = _slice_for(layout, kind, site)
    tables = _layer_tables(layout, head_sets, kind, float(epsilon), proj)
    hooks = AblationHooks()
    try:
        for layer, (scale, mask) in tables.items():
            module = layout.module(hf, layer, proj)
            if on_proj_out:

                def fwd_hook(mod, args, output, scale=scale, mask=mask):
                    return _edit(output, proj, scale, mask)

                hooks.handles.append(module.register_forward_hook(fwd_hook))
            else:

                def pre_hook(mod, args, kwargs, scale=scale, mask=mask):
                    if args:
                        return (_edit(args[0], proj, scale, mask), *args[1:]), kwargs
                    name = next(iter(kwargs))  # called with the input as a keyword
                    return args, {**kwargs, name: _edit(kwargs[name], proj, scale, mask)}

                hooks.handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            hooks.layers.append(layer)
        yield hooks
    finally:
        hooks.remove()


def ablate(model, heads, kind: str = "undifferentiated", epsilon: float = 1e-5, site: str | None = None):
    """Context manager: every row of every forward inside has `heads` ablated.

    `heads`: [(layer, head), ...] or "l-h,l-h". An empty set attaches no hook.
    """
    return _hooked(model, [parse_heads(heads)], kind, epsilon, site)


def ablate_rows(model, head_sets, kind: str = "undifferentiated", epsilon: float = 1e-5, site: str | None = None):
    """Context manager: row i of every batch has head_sets[i] ablated (batch size == len(head_sets))."""
    head_sets = [parse_heads(hs) for hs in head_sets]
    if not head_sets:
        raise ValueError("ablate_rows needs one head set per batch row; got none")
    return _hooked(model, head_sets, kind, epsilon, site)


def parameters_modified(model_or_layout, heads, kind: str, site: str | None = None) -> tuple[int, float]:
    """(number of weights and biases `bake` edits, share of all model parameters)."""
    from shb.models.layout import AttentionLayout

    layout = model_or_layout if isinstance(model_or_layout, AttentionLayout) else _resolve(model_or_layout)[1]
    site = _check_kind_site(kind, site, layout)
    if kind == "mean":
        raise ValueError(_MEAN_BAKE_ERROR)
    heads = _check_heads(heads, layout)
    proj, on_proj_out = _slice_for(layout, kind, site)
    # Query/key rows: head_dim x hidden weights (+ head_dim bias). Output columns: hidden x head_dim;
    # the output projection's bias is shared by all heads and is not edited.
    per_head = proj.head_dim * layout.hidden_size + (proj.head_dim if on_proj_out and proj.bias else 0)
    count = per_head * len(heads)
    share = count / layout.n_params if layout.n_params else float("nan")
    return count, share


_MEAN_BAKE_ERROR = (
    "kind='mean' cannot be baked into weights: the mean over a layer's heads depends on the "
    "activations of each input. Use the hooks (shb.ablation.ablate) or another kind."
)


def bake(model, heads, kind: str, epsilon: float = 1e-5, site: str | None = None) -> int:
    """Edit the weights in place so that the plain model computes the ablation. Returns the count edited."""
    import torch

    hf, layout = _resolve(model)
    site = _check_kind_site(kind, site, layout)
    if kind == "mean":
        raise ValueError(_MEAN_BAKE_ERROR)
    heads = _check_heads(heads, layout)
    proj, on_proj_out = _slice_for(layout, kind, site)
    factor = 0.0 if kind == "zero" else float(epsilon)
    count = 0
    with torch.no_grad():
        for layer, h in heads:
            module = layout.module(hf, layer, proj)
            idx = torch.tensor(list(proj.features(h)), device=module.weight.device)
            # Query/key side edits rows of the projection output (and its bias); output side edits
            # the columns that read the head's output. Conv1D stores (in, out), nn.Linear (out, in).
            out_dim = 1 if proj.conv1d else 0
            dim = out_dim if on_proj_out else 1 - out_dim
            w = module.weight
            w.index_copy_(dim, idx, w.index_select(dim, idx) * factor)
            count += idx.numel() * layout.hidden_size
            if on_proj_out and getattr(module, "bias", None) is not None:
                module.bias.index_copy_(0, idx, module.bias.index_select(0, idx) * factor)
                count += idx.numel()
    return count
