"""Head ablation as edits at named points (shb.hooks) of stock transformers modules, and the same edits
baked into weights.

Kinds (docs/design.md, "Head ablation, precisely"):
- undifferentiated: the query of the head, as it enters the attention scores, times epsilon
  (bias included, after any query norm); at epsilon = 0 the head attends uniformly over its
  (unpadded, in-window) causal prefix. With learned sinks (GPT-OSS) the sink keeps its logit:
  each visible key gets 1 / (n + e^sink), the sink the rest.
  `site="k"` scales the head's key instead (refused under grouped-query attention).
- scaling: the head's output (its slice of the output projection's input) times epsilon.
- mean: the head's query (site "q", default) or output (site "output") replaced by the
  mean over all heads of its layer.
- zero: the head's output set to zero.

Query/key edits are at the points `L<l>.attn.q` / `L<l>.attn.k`: the query as it enters the
scores, i.e. the projection's output or, where the model normalises the query (`q_norm`,
`qk_norm`), the norm's output, because the norm would undo a scaling before it (per-head
RMSNorm) or spread it over every head (OLMo-2's norm over the whole projection); a norm shared
by query and key is edited on its first (query) call only (shb.hooks resolves all of this).
Scaling or averaging the query before the rotary embedding equals doing it after, because the
rotation is linear and the same for every head at a position (and Llama-4's per-position
temperature is a scalar). Output edits are at `L<l>.attn.head_out`, the output projection's
input split by head: one head's own output, never the mixed output after the projection.

The edits never fork attention code: they only rescale or replace slices of a tensor at a named
point. One edit per touched layer applies an (R, H) multiplier and an (R, H) mean mask (R = 1,
or one row per batch row), so `ablate_rows` puts many different head sets in one batch. Every
edit is per position, so left padding and the KV cache do not change what a row computes.

Importable without torch (KINDS, parse_heads, format_head).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from shb.models.layout import UnsupportedArchitecture

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
    from shb.hooks import model_and_layout

    return model_and_layout(model)


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


def _which(kind: str, site: str) -> str:
    """"q", "k" or "output": the tensor a kind/site edits."""
    return site if site in ("q", "k") else "output"


def _slice_for(layout, kind: str, site: str, layer: int | None = None):
    """The ProjSlice a kind/site edits in `layer` (hooks), and whether it is on the module's output (else input)."""
    which = _which(kind, site)
    if layer is None:
        proj = layout.output if which == "output" else (layout.query if which == "q" else layout.key)
    else:
        proj = layout.site(which, layer)
    return proj, which != "output"


_POINT = {"q": "q", "k": "k", "output": "head_out"}


def head_edit(scale, mean_mask):
    """The function at a head point: per-head features (B, T, H, D) times scale (R, H), the mean over the
    layer's heads where mean_mask (R, H).

    R is 1 (the same heads in every row) or B (ablate_rows). Also the function of a suite's ``points``
    intervention (shb.interventions.PointEdit), so a declared edit and an ablation are one computation. Rows whose scale is 1 and mask False are
    bit-identical to the input (x * 1.0 == x); shb.hooks writes the result into a copy, so autograd
    through the edit stays valid."""

    def edit(src):
        import torch

        if scale.shape[0] not in (1, src.shape[0]):
            raise ValueError(
                f"ablate_rows was given {scale.shape[0]} head sets but the batch has {src.shape[0]} rows; "
                "the batch size must equal len(head_sets)"
            )
        s = scale.to(device=src.device, dtype=src.dtype)[:, None, :, None]  # (R, 1, H, 1)
        new = src * s
        if mean_mask is not None:
            mean = src.mean(dim=2, keepdim=True)  # (B, T, 1, D) mean over the layer's heads
            new = torch.where(mean_mask.to(src.device)[:, None, :, None], mean, new)
        return new

    return edit


def _layer_tables(head_sets: Sequence[Sequence[tuple[int, int]]], kind: str, epsilon: float, n_heads: int):
    """{layer: (scale (R, H), mean_mask (R, H) or None)} for the layers any row touches."""
    import torch

    rows = len(head_sets)
    touched = sorted({layer for hs in head_sets for layer, _ in hs})
    tables = {}
    for layer in touched:
        scale = torch.ones(rows, n_heads, dtype=torch.float32)
        mask = torch.zeros(rows, n_heads, dtype=torch.bool) if kind == "mean" else None
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
    """Handle yielded by `ablate`/`ablate_rows`: the layers edited (one point each)."""

    def __init__(self, layers: list[int]):
        self.layers = layers

    @property
    def n_hooks(self) -> int:
        """Edited layers (a norm edit also puts a call counter on its attention module)."""
        return len(self.layers)


@contextlib.contextmanager
def _hooked(model, head_sets, kind, epsilon, site) -> Iterator[AblationHooks]:
    from shb import hooks

    hf, layout = _resolve(model)
    site = _check_kind_site(kind, site, layout)
    head_sets = [_check_heads(hs, layout) for hs in head_sets]
    tables = _layer_tables(head_sets, kind, float(epsilon), _slice_for(layout, kind, site)[0].n_heads)
    part = _POINT[_which(kind, site)]
    edits = {f"L{layer}.attn.{part}": head_edit(scale, mask) for layer, (scale, mask) in tables.items()}
    with hooks.at(hf, edits, layout=layout):
        yield AblationHooks(list(tables))


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


def _bake_plan(layout, kind: str, site: str, epsilon: float | None):
    """[(ProjSlice, edit)] of the parameters a bake touches in every layer, edit in
    "rows" (projection output features and bias), "cols" (output-projection input) or "norm"
    (the norm's own weight/bias entries of the head).

    Query/key side:
    - no norm: the projection's rows of the head (and their bias) times epsilon;
    - a norm whose weight has entries per head and feature (OLMo-2/3 over the whole projection,
      Cohere's per-head LayerNorm): those entries (and bias) times epsilon. They multiply after the
      normalisation, exactly like the hook; scaling the projection rows instead would be undone
      (per head) or move every head (OLMo divides by the RMS over all heads);
    - per-head norm with one weight shared by all heads (Qwen3, Gemma-3, Llama-4, Qwen3-Next):
      no weight scales one head's normalised query. Only epsilon = 0 bakes exactly: zero rows
      give a zero query and the norm maps 0 to 0. Other epsilons are refused (epsilon=None:
      the count of that zero-row bake, what parameters_modified reports).
    """
    which = _which(kind, site)
    if which == "output":
        return [(layout.output, "cols")]
    norm = layout.qk_norm
    proj = layout.query_proj if which == "q" else layout.key_proj
    norm_site = layout.query if which == "q" else layout.key
    if norm == "none":
        plan = [(proj, "rows")]
    elif layout.norm_weight == "per_head":
        # The norm's weight has its own entries for each head's features (OLMo-2/3: over the whole
        # projection; Cohere: (heads, head_dim)); they multiply after the normalisation: exact for any epsilon.
        return [(norm_site, "norm")]
    elif norm == "across_heads":
        raise UnsupportedArchitecture(
            f"{layout.arch}: cannot bake into weights: {norm_site.module} normalises all heads together and has "
            "no per-head weight, so no weight edit scales one head's normalised query; use the hooks.")
    else:
        if epsilon is not None and epsilon != 0.0:
            raise UnsupportedArchitecture(
                f"{layout.arch}: cannot bake epsilon={epsilon:g} into weights: the query/key norm "
                f"({norm_site.module}, an RMS over each head's {layout.head_dim} features with one weight shared by "
                "all heads) undoes any scaling of the projection rows, and scaling its weight would touch every "
                "head. epsilon=0 bakes exactly (zero rows; the norm maps 0 to 0); otherwise use the hooks "
                "(shb.ablation.ablate), which edit the normalised query.")
        if layout.norm_bias:
            raise UnsupportedArchitecture(f"{layout.arch}: {norm_site.module} has a bias, so zero projection rows "
                                          "do not give a zero query; use the hooks.")
        plan = [(proj, "rows")]
    if proj is None:
        raise UnsupportedArchitecture(f"{layout.arch}: shb could not locate each head's rows on the "
                                      f"{which} projection (the norm does not read a view of it)")
    return plan


def _norm_free_plan(layout, kind, site):
    which = _which(kind, site)
    if which == "output" or not layout.norm_free_layers:
        return None
    return [(layout.query_proj if which == "q" else layout.key_proj, "rows")]


def parameters_modified(model_or_layout, heads, kind: str, site: str | None = None,
                        epsilon: float | None = None) -> tuple[int, float]:
    """(number of weights, biases and norm weights `bake` edits, share of all model parameters).

    For a per-head query norm the count is that of the exact epsilon=0 bake (the head's projection
    rows and bias); `epsilon` other than 0 there raises, as `bake` does.
    """
    from shb.models.layout import AttentionLayout

    layout = model_or_layout if isinstance(model_or_layout, AttentionLayout) else _resolve(model_or_layout)[1]
    site = _check_kind_site(kind, site, layout)
    if kind == "mean":
        raise ValueError(_MEAN_BAKE_ERROR)
    heads = _check_heads(heads, layout)
    count = 0
    for layer, _h in heads:
        plan = _norm_free_plan(layout, kind, site) if layer in layout.norm_free_layers else None
        for proj, edit in plan or _bake_plan(layout, kind, site, epsilon):
            if edit == "norm":  # the norm's weight (and bias) entries of the head
                count += proj.head_dim * (2 if layout.norm_bias else 1)
            elif edit == "cols":  # hidden x head_dim; the output bias is shared by all heads and not edited
                count += proj.head_dim * layout.hidden_size
            else:  # head_dim x hidden weights (+ head_dim bias)
                count += proj.head_dim * layout.hidden_size + (proj.head_dim if proj.bias else 0)
    share = count / layout.n_params if layout.n_params else float("nan")
    return count, share


_MEAN_BAKE_ERROR = (
    "kind='mean' cannot be baked into weights: the mean over a layer's heads depends on the "
    "activations of each input. Use the hooks (shb.ablation.ablate) or another kind."
)


def bake_targets(model, heads, kind: str, epsilon: float = 1e-5, site: str | None = None) -> list:
    """[(layer, head, module, ProjSlice, edit)] that `bake` edits (checked: raises what `bake` raises)."""
    hf, layout = _resolve(model)
    site = _check_kind_site(kind, site, layout)
    if kind == "mean":
        raise ValueError(_MEAN_BAKE_ERROR)
    factor = 0.0 if kind == "zero" else float(epsilon)
    out = []
    for layer, h in _check_heads(heads, layout):
        plan = _norm_free_plan(layout, kind, site) if layer in layout.norm_free_layers else None
        for proj, edit in plan or _bake_plan(layout, kind, site, factor):
            out.append((layer, h, layout.module(hf, layer, proj), proj, edit))
    return out


def bake(model, heads, kind: str, epsilon: float = 1e-5, site: str | None = None) -> int:
    """Edit the weights in place so that the plain model computes the ablation. Returns the count edited."""
    import torch

    _, layout = _resolve(model)
    factor = 0.0 if kind == "zero" else float(epsilon)
    count = 0
    with torch.no_grad():
        for _layer, h, module, proj, edit in bake_targets(model, heads, kind, epsilon, site):
            idx = torch.tensor(list(proj.features(h)), device=module.weight.device)
            if edit == "norm":
                # The norm's per-feature weight (and bias) entries of the head (heads on axis None: flat features).
                for p in (module.weight, getattr(module, "bias", None)):
                    if p is not None:
                        flat = p.view(-1)  # (heads, head_dim) weights (Cohere) are indexed as flat features
                        flat.index_copy_(0, idx, flat.index_select(0, idx) * factor)
                        count += idx.numel()
                continue
            # Query/key side edits rows of the projection output (and its bias); output side edits
            # the columns that read the head's output. Conv1D stores (in, out), nn.Linear (out, in).
            on_proj_out = edit == "rows"
            out_dim = 1 if proj.conv1d else 0
            dim = out_dim if on_proj_out else 1 - out_dim
            w = module.weight
            w.index_copy_(dim, idx, w.index_select(dim, idx) * factor)
            count += idx.numel() * layout.hidden_size
            if on_proj_out and getattr(module, "bias", None) is not None:
                module.bias.index_copy_(0, idx, module.bias.index_select(0, idx) * factor)
                count += idx.numel()
    return count
