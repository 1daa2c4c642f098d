"""Named intervention points: one way to read, replace or take gradients of any activation of every
architecture shb supports, resolved from the model's layout (shb.models.layout).

A point's name is the same string in every family::

    L<l>.attn.in        (B, T, d)      the attention module's input hidden states
    L<l>.attn.q         (B, T, H, D)   each head's query as it enters the scores (after a q norm)
    L<l>.attn.k         (B, T, Hkv, D) each kv head's key as it enters the scores
    L<l>.attn.v         (B, T, Hkv, D) each kv head's value
    L<l>.attn.weights   (B, H, T, S)   attention weights (read only; the block runs eager attention)
    L<l>.attn.head_out  (B, T, H, D)   each head's output: the output projection's input, split by head
    L<l>.attn.out       (B, T, d)      the attention module's output, before the residual add
    L<i>.resid_pre      (B, T, d)      residual stream entering decoder layer i
    L<i>.resid_mid      (B, T, d)      between attention and MLP (read only; where the family has one)
    L<i>.resid_post     (B, T, d)      decoder layer i's output
    L<i>.mlp.act        (B, T, F)      the MLP's activation: the input of its down projection
    L<i>.<path>:in|out  any submodule of decoder layer i by its path there (family-specific names, for
                        methods that edit every linear map, e.g. ``L0.self_attn.q_proj:in``)
    final_norm.in       (B, T, d)      residual stream entering the final norm
    final_norm          (B, T, d)      the LM head's input (the final norm's output)
    logits              (B, T, V)

``<l>`` counts attention layers, as heads are numbered everywhere in shb; ``<i>`` counts decoder
layers. They are the same except on hybrid models (Jamba, LFM2, Qwen3-Next), whose layers without
softmax attention have no ``attn`` points: there ``L<l>.attn`` is in decoder layer
``layout.attention_layers[l]`` (``shb ls points --model ...`` prints the mapping).

One context manager attaches functions to points and always removes them (exceptions and
KeyboardInterrupt included)::

    with hooks.at(model, {"L3.attn.head_out": fn, "L5.resid_post": [g, h]}):
        model(...)

``fn(x)`` runs on every forward pass with the tensor at the point and returns None (read) or a tensor
of the same shape that replaces it. On head points ``x`` is a (B, T, H, D) view of the module's
tensor and a returned tensor is written into a copy, so the function never sees where a family keeps
its heads (fused [q | k | v], GPT-NeoX's interleaving, a per-head norm's axis). Do not edit ``x`` in
place. Gradients: ``x`` carries its graph, so ``lambda x: x + leaf`` (a zero leaf that requires grad)
makes d(out)/d(leaf) the total derivative at the point. Per-row edits (a different head set in every
batch row) are edits whose multiplier has a batch axis. Functions on one point run in the order
given; contexts nest (the inner one's functions see what the outer ones wrote).

Other facilities, also undone on exit: ``start_at`` (run from decoder layer i on cached hidden states:
the engine's prefix cache), ``skip_layers`` (layers that pass their input through), ``head_skipped``
(final norm and LM head replaced by stand-ins that record their input), ``on_call`` (callbacks around
every call of the model itself), ``module_input`` (the input of a module the caller holds).
``shb.hooks.raw`` is the only code in shb that registers torch hooks or swaps submodules.

Importable without torch.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shb.hooks.raw import Attached
from shb.models.projections import ProjSlice, UnsupportedArchitecture, text_config

ATTN_PARTS = ("in", "q", "k", "v", "weights", "head_out", "out")
LAYER_PARTS = ("resid_pre", "resid_mid", "resid_post", "mlp.act")
GLOBAL_POINTS = ("final_norm.in", "final_norm", "logits")
HEAD_PARTS = ("q", "k", "v", "head_out")
READ_ONLY = {"attn.weights", "resid_mid"}

_ATTN_RE = re.compile(r"^L(\d+)\.attn\.(" + "|".join(ATTN_PARTS) + r")$")
_LAYER_RE = re.compile(r"^L(\d+)\.(resid_pre|resid_mid|resid_post|mlp\.act)$")
_MODULE_RE = re.compile(r"^L(\d+)\.([A-Za-z_][\w.]*):(in|out)$")

ABOUT = {
    "attn.in": ("(batch, seq, {d})", "the attention module's input hidden states"),
    "attn.q": ("(batch, seq, {H} heads, {D})", "each head's query as it enters the scores{qnote}"),
    "attn.k": ("(batch, seq, {Hkv} kv heads, {D})", "each kv head's key as it enters the scores"),
    "attn.v": ("(batch, seq, {Hkv} kv heads, {D})", "each kv head's value"),
    "attn.weights": ("(batch, {H} heads, seq, keys)", "attention weights, read only (eager attention while hooked)"),
    "attn.head_out": ("(batch, seq, {H} heads, {D})", "each head's output: the output projection's input by head"),
    "attn.out": ("(batch, seq, {d})", "the attention module's output, before the residual add"),
    "resid_pre": ("(batch, seq, {d})", "residual stream entering the decoder layer"),
    "resid_mid": ("(batch, seq, {d})", "residual stream between attention and MLP, read only"),
    "resid_post": ("(batch, seq, {d})", "the decoder layer's output"),
    "mlp.act": ("(batch, seq, {F})", "the MLP's activation: the input of its down projection"),
    "final_norm.in": ("(batch, seq, {d})", "residual stream entering the final norm"),
    "final_norm": ("(batch, seq, {d})", "the LM head's input: the final norm's output"),
    "logits": ("(batch, seq, {V})", "the LM head's output"),
}


@dataclass(frozen=True)
class Point:
    """A resolved name: ``part`` is the name without its layer (``attn.q``, ``resid_post``, ``logits``,
    ``module:in``); ``layer`` the attention layer of ``attn.*`` points, the decoder layer of the others."""

    name: str
    part: str
    layer: int | None = None
    path: str | None = None  # module points: the submodule's path inside the decoder layer

    @property
    def writable(self) -> bool:
        return self.part not in READ_ONLY

    @property
    def heads(self) -> bool:
        return self.part.startswith("attn.") and self.part[5:] in HEAD_PARTS


# -- the model and its layout ------------------------------------------------------------------------


def model_and_layout(model: Any):
    """(transformers model, layout) from a bare model or an object with ``.model`` (LoadedModel). A bare
    model's layout is detected once and kept on it (detection counts parameters and may probe)."""
    from shb.models.layout import detect

    hf = _hf(model)
    layout = getattr(model, "layout", None)
    if layout is None:
        layout = getattr(hf, "_shb_layout", None)
        if layout is None:
            layout = detect(hf)
            hf._shb_layout = layout
    return hf, layout


def _cache(hf) -> dict:
    """Per-model memo of resolved points and module slots (plain attribute: not a submodule, not saved)."""
    cache = hf.__dict__.get("_shb_hook_cache")
    if cache is None:
        cache = hf.__dict__["_shb_hook_cache"] = {}
    return cache


def point(model: Any, name: str, layout=None) -> Point:
    """The Point ``name`` names on ``model``; ValueError (UnsupportedArchitecture where the family lacks it)
    naming the problem and the names that exist. Global points need no layout."""
    hf = _hf(model)
    cache = _cache(hf)
    found = cache.get(name)
    if found is None:
        if name in GLOBAL_POINTS:
            found = Point(name, name)
        else:
            found = _parse(hf, layout if layout is not None else model_and_layout(model)[1], name)
        cache[name] = found
    return found


def _hf(model):
    """The transformers model of a model or a LoadedModel."""
    if hasattr(model, "config") and hasattr(model, "parameters"):
        return model
    hf = getattr(model, "model", None)
    if hf is None or not hasattr(hf, "config"):
        raise TypeError(f"expected a transformers model or a LoadedModel, got {type(model).__name__}")
    return hf


def _parse(hf, layout, name: str) -> Point:
    if not isinstance(name, str):
        raise TypeError(f"a point is named by a string such as 'L0.attn.q', got {name!r}")
    m = _ATTN_RE.match(name)
    if m:
        layer, part = int(m.group(1)), "attn." + m.group(2)
        _check_layer(name, layer, layout.n_layers, "attention layers")
        if part in ("attn.q", "attn.k", "attn.v"):
            _head_site(layout, part[5:], layer, name)  # raises where the family has no such site
        return Point(name, part, layer)
    m = _LAYER_RE.match(name)
    if m:
        layer = int(m.group(1))
        _check_layer(name, layer, layout.n_decoder_layers or layout.n_layers, "decoder layers")
        if m.group(2) == "mlp.act":
            layout.mlp(hf, layer)  # raises where there is no single down projection
        elif m.group(2) == "resid_mid" and _mid_child(hf, layout, layer) is None:
            raise UnsupportedArchitecture(f"point {name}: decoder layer {layer} of {layout.arch} has no residual stream "
                                          "between attention and MLP (a parallel block)")
        return Point(name, m.group(2), layer)
    m = _MODULE_RE.match(name)
    if m:
        layer, path = int(m.group(1)), m.group(2)
        _check_layer(name, layer, layout.n_decoder_layers or layout.n_layers, "decoder layers")
        try:
            layout.layers(hf)[layer].get_submodule(path)
        except AttributeError:
            raise ValueError(f"point {name}: decoder layer {layer} has no submodule {path!r}") from None
        return Point(name, "module:" + m.group(3), layer, path)
    known = [f"L0.attn.{p}" for p in ATTN_PARTS] + [f"L0.{p}" for p in LAYER_PARTS] + list(GLOBAL_POINTS)
    close = difflib.get_close_matches(re.sub(r"^L\d+", "L0", name), known, n=1, cutoff=0.6)
    hint = f" (did you mean '{re.sub('^L0', name.split('.')[0], close[0])}'?)" if close else ""
    raise ValueError(f"unknown point {name!r}{hint}; points are L<layer>.attn.{{{','.join(ATTN_PARTS)}}}, "
                     f"L<layer>.{{{','.join(LAYER_PARTS)}}}, L<layer>.<submodule path>:in|out, "
                     f"{', '.join(GLOBAL_POINTS)} (`shb ls points --model ...` lists them)")


def _check_layer(name: str, layer: int, n: int, what: str) -> None:
    if not 0 <= layer < n:
        raise ValueError(f"point {name}: layer {layer} is out of range ({n} {what}, 0-{n - 1})")


def _head_site(layout, which: str, layer: int, name: str) -> ProjSlice:
    """The ProjSlice of ``which`` ("q", "k", "v", "head_out") in attention layer ``layer``."""
    if which == "head_out":
        return layout.output
    proj = layout.value if which == "v" else layout.site(which, layer)
    if proj is None:
        raise UnsupportedArchitecture(f"point {name}: shb cannot locate each head's {which} in this layer "
                                      f"({layout.geometry()})")
    if proj.axis is not None and not layout.probed:
        raise ValueError("this layout was detected without probing the model (from a config); "
                         f"detect it from the loaded model to hook {name}")
    return proj


# -- tensors at a point ------------------------------------------------------------------------------


def head_view(t, proj: ProjSlice):
    """(B, T, H, D) view of the per-head features of ``t`` that ``proj`` locates.

    ``t`` is (B, T, F) (projection outputs and inputs, a norm over the whole projection) or, after a
    per-head norm, (B, T, H, D) / (B, H, T, D) with the heads on ``proj.axis``."""
    if proj.axis is not None:
        if t.dim() != 4 or t.shape[proj.axis] != proj.n_heads or t.shape[-1] != proj.head_dim:
            raise ValueError(f"{proj.module} returned shape {tuple(t.shape)}; the layout expects "
                             f"{proj.n_heads} heads on axis {proj.axis} and head_dim {proj.head_dim} last")
        return t.movedim(proj.axis, 2)
    if t.dim() != 3:
        raise ValueError(f"expected a (batch, seq, features) activation at {proj.module}, got shape {tuple(t.shape)}")
    b, n = t.shape[0], t.shape[1]
    block = t[..., proj.start: proj.end]  # (B, T, H * stride)
    heads = block.view(b, n, proj.n_heads, proj.head_stride)  # (B, T, H, stride)
    return heads[..., proj.inner: proj.inner + proj.head_dim]  # (B, T, H, D)


def _covers(proj: ProjSlice, x) -> bool:
    """The heads are the whole (B, T, F) tensor in order: the view is a plain reshape."""
    return (proj.axis is None and proj.start == 0 and proj.inner == 0 and proj.head_stride == proj.head_dim
            and proj.end == x.shape[-1])


def _write_heads(x, proj: ProjSlice, new):
    """``x`` with its heads replaced by ``new`` (B, T, H, D): a new tensor (autograd stays valid)."""
    if _covers(proj, x):
        return new.reshape(x.shape)
    out = x.clone()
    head_view(out, proj).copy_(new)
    return out


def _chain(fns: list, name: str, writable: bool) -> Callable:
    """One function applying ``fns`` in order, each to what the previous returned."""

    def run(x):
        for fn in fns:
            y = fn(x)
            if y is not None:
                if not writable:
                    raise ValueError(f"point {name} is read only: a function attached there must return None")
                x = y
        return x

    return run


def _on_heads(fn, proj: ProjSlice):
    """fn on the (B, T, H, D) view; the module's tensor rebuilt only when fn returns one."""

    def run(x):
        x = x.contiguous()  # the view needs a dense last dimension
        src = head_view(x, proj)
        new = fn(src)
        return None if new is None or new is src else _write_heads(x, proj, new)

    return run


# pre-hooks (module inputs) and forward hooks (module outputs), built around one function fn(x) -> x or None

def _pre_positional(fn):
    def hook(_module, args):
        new = fn(args[0])
        return None if new is None or new is args[0] else (new, *args[1:])
    return hook


def _pre_keyword(fn, key: str | None):
    """Pre-hook with kwargs on the module's first input: positional, ``key`` or the first keyword."""

    def hook(_module, args, kwargs):
        if args:
            x = args[0]
            new = fn(x)
            return None if new is None or new is x else ((new, *args[1:]), kwargs)
        k = key if key in kwargs else next(iter(kwargs))
        x = kwargs[k]
        new = fn(x)
        return None if new is None or new is x else (args, {**kwargs, k: new})

    return hook


def _post(fn, item: int = 0):
    """Forward hook on the module's output: a tensor, or item ``item`` of a tuple."""

    def hook(_module, _args, output):
        x = output[item] if isinstance(output, tuple) else output
        if x is None:
            raise RuntimeError(f"{type(_module).__name__} returned no tensor at output {item} (attention weights "
                               "need eager attention)")
        new = fn(x)
        if new is None or new is x:
            return None
        return (*output[:item], new, *output[item + 1:]) if isinstance(output, tuple) else new

    return hook


def _counted(fn, call: int):
    """(restart pre-hook for the attention module, forward hook for its norm) applying fn to call number ``call``
    of the norm within each attention forward: a norm shared by query and key runs twice (0 query, 1 key)."""
    count = [0]

    def restart(_module, _args):
        count[0] = 0

    def counted(_module, _args, output):
        c = count[0]
        count[0] += 1
        if c != call:
            return None
        new = fn(output)
        return None if new is None or new is output else new

    return restart, counted


def _attach(attached: Attached, hf, layout, p: Point, fn) -> None:
    part = p.part
    if p.heads:
        which = part[5:]
        proj = _head_site(layout, which, p.layer, p.name)
        module = layout.module(hf, p.layer, proj)
        run = _on_heads(fn, proj)
        if which == "head_out":
            attached.pre(module, _pre_positional(run))
        elif proj.call == 0 and proj.axis is None and proj.module.endswith(("proj", "c_attn", "query_key_value")):
            attached.post(module, _post(run))
        else:
            restart, counted = _counted(run, proj.call)
            attached.pre(layout.attention(hf, p.layer), restart)
            attached.post(module, counted)
    elif part == "attn.in":
        attached.pre(layout.attention(hf, p.layer), _pre_keyword(fn, "hidden_states"), with_kwargs=True)
    elif part == "attn.out":
        attached.post(layout.attention(hf, p.layer), _post(fn, 0))
    elif part == "attn.weights":
        attached.post(layout.attention(hf, p.layer), _post(fn, 1))
    elif part == "resid_pre":
        attached.pre(layout.layers(hf)[p.layer], _pre_keyword(fn, "hidden_states"), with_kwargs=True)
    elif part == "resid_post":
        attached.post(layout.layers(hf)[p.layer], _post(fn, 0))
    elif part == "resid_mid":
        child = getattr(layout.layers(hf)[p.layer], _mid_child(hf, layout, p.layer))
        attached.pre(child, _pre_keyword(fn, "hidden_states"), with_kwargs=True)
    elif part == "mlp.act":
        attached.pre(layout.mlp(hf, p.layer)[1], _pre_positional(fn))
    elif part == "module:in":
        attached.pre(layout.layers(hf)[p.layer].get_submodule(p.path), _pre_keyword(fn, None), with_kwargs=True)
    elif part == "module:out":
        attached.post(layout.layers(hf)[p.layer].get_submodule(p.path), _post(fn, 0))
    elif part == "final_norm.in":
        attached.pre(final_modules(hf)[0], _pre_keyword(fn, None), with_kwargs=True)
    elif part == "final_norm":
        attached.pre(hf.get_output_embeddings(), _pre_keyword(fn, None), with_kwargs=True)
    elif part == "logits":
        attached.post(hf.get_output_embeddings(), _post(fn, 0))
    else:  # pragma: no cover - _parse makes only the parts above
        raise AssertionError(part)


class _Attaching:
    """Base of this module's context managers: ``_attach(attached)`` adds what the block needs to an
    ``Attached``; all of it is removed on exit, and at once when attaching itself fails half way.
    Also usable without ``with``: ``h = ....attach()`` ... ``h.remove()`` (a training loop)."""

    _attached: Attached | None = None

    def _attach(self, attached: Attached) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def attach(self):
        attached = Attached()
        try:
            self._attach(attached)
        except BaseException:
            attached.remove()
            raise
        self._attached = attached
        return self

    def remove(self) -> None:
        if self._attached is not None:
            self._attached.remove()
            self._attached = None

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


class at(_Attaching):
    """Context manager: ``edits`` ({point name: fn or [fn, ...]}) attached to ``model`` (a transformers model
    or a LoadedModel) for the block, removed on exit whatever happens. ``layout`` skips the lookup.

    Also usable without ``with``: ``h = at(...).attach()`` ... ``h.remove()`` (a training loop)."""

    def __init__(self, model: Any, edits: dict, *, layout=None):
        self.model, self.edits, self.layout = model, edits, layout

    def _attach(self, attached: Attached) -> None:
        hf, layout = _hf(self.model), self.layout
        eager = False
        for name, fns in self.edits.items():
            if layout is None and name not in GLOBAL_POINTS:
                layout = model_and_layout(self.model)[1]
            p = point(self.model, name, layout)
            fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
            fn = fns[0] if len(fns) == 1 and p.writable else _chain(fns, name, p.writable)
            _attach(attached, hf, layout, p, fn)
            eager = eager or p.part == "attn.weights"
        if eager:
            _switch_to_eager(attached, hf)


def record(names: Iterable[str], *, detach: bool = True, keep: Callable | None = None) -> tuple[dict, dict]:
    """(seen, edits): ``edits`` for ``at`` that store the tensor at each point in ``seen[name]`` on every
    forward (the last one wins), detached unless ``detach=False``; ``keep(x)`` transforms it first."""
    seen: dict = {}

    def grab(name):
        def fn(x):
            y = keep(x) if keep is not None else x
            seen[name] = y.detach() if detach else y
        return fn

    return seen, {name: grab(name) for name in names}


def _switch_to_eager(attached: Attached, hf) -> None:
    """Eager attention while attached: the only kernel that returns the weights."""
    config = hf.config
    before = config._attn_implementation
    setter = getattr(hf, "set_attn_implementation", None)
    if setter is not None:
        setter("eager")
        attached.on_remove(lambda: setter(before))
    else:
        config._attn_implementation = "eager"
        attached.on_remove(lambda: setattr(config, "_attn_implementation", before))


# -- the final norm and LM head ------------------------------------------------------------------------


def final_modules(hf) -> list:
    """[final norm, (OPT's project_out)], the modules between the last decoder layer and the LM head."""
    return [getattr(parent, name) for parent, name in final_slots(hf)]


def final_slots(hf) -> list:
    """(parent, attribute) of the final norm and output projection (shb.models.layout.final_chain), memoised."""
    from shb.models.layout import final_chain

    cache = _cache(hf)
    if "final_slots" not in cache:
        cache["final_slots"] = final_chain(hf)
    return cache["final_slots"]


def _slot_of(hf, module) -> tuple[Any, str]:
    """(parent, attribute name) under which ``module`` is registered in ``hf``, memoised."""
    cache = _cache(hf)
    key = ("slot", id(module))
    if key not in cache:
        for _name, sub in hf.named_modules():
            for child_name, child in sub._modules.items():
                if child is module:
                    cache[key] = (sub, child_name)
                    return cache[key]
        raise RuntimeError(f"{type(module).__name__} is not a submodule of {type(hf).__name__}")
    return cache[key]


_STAND_INS: dict = {}


def _stand_in_classes():
    """The stand-in module classes (made once; torch is imported on first use)."""
    if not _STAND_INS:
        import torch

        class Skip(torch.nn.Module):
            """Stands in for the final norm / output projection: passes its input on, the first one recording it."""

            def __init__(self, record=None):
                super().__init__()
                self.record = record

            def forward(self, hidden_states, *args, **kwargs):
                if self.record is not None:
                    self.record.hidden = hidden_states
                return hidden_states

        class NoLogits(Skip):
            """Stands in for the LM head: no logits (the caller computes those it wants)."""

            def forward(self, hidden_states, *args, **kwargs):
                return super().forward(hidden_states)[..., :0]

        class PassThrough(torch.nn.Module):
            """Stands in for a decoder layer below the start layer: returns its input hidden states unchanged."""

            def forward(self, hidden_states, *args, **kwargs):
                return hidden_states

        _STAND_INS.update(skip=Skip, no_logits=NoLogits, pass_through=PassThrough)
    return _STAND_INS


class head_skipped(_Attaching):
    """Context manager: the model's final norm, output projection and LM head replaced by stand-ins; the
    yielded object's ``.hidden`` is the (B, T, d) input of the first of them after a forward pass. The
    model returns empty logits: the caller scores the positions it wants (shb.scorers.head)."""

    def __init__(self, model):
        self.hf = _hf(model)
        self.hidden = None

    def _attach(self, attached: Attached) -> None:
        slots = [*final_slots(self.hf), _slot_of(self.hf, self.hf.get_output_embeddings())]
        for i, (parent, name) in enumerate(slots):
            kind = _stand_in_classes()["no_logits" if i == len(slots) - 1 else "skip"]
            attached.swap(parent, name, kind(self if i == 0 else None))


class module_input(_Attaching):
    """Context manager: ``.hidden`` is the first input of ``module`` (one the caller holds, not a named point:
    the scoring head's first module) at its last call."""

    def __init__(self, module):
        self.module, self.hidden = module, None

    def _attach(self, attached: Attached) -> None:
        def grab(_module, args, kwargs):
            self.hidden = args[0] if args else next(iter(kwargs.values()))

        attached.pre(self.module, grab, with_kwargs=True)


# -- layers skipped, or run from cached hidden states --------------------------------------------------


class start_at(_Attaching):
    """Context manager: run the model from decoder layer ``layer`` on cached hidden states ``hidden`` (B, T, d):
    the layers below pass their input through unchanged (stand-ins: they do no work) and layer ``layer``
    receives ``hidden`` instead of what reaches it. The stock model still runs its embeddings, masks and
    rotary tables, so nothing architecture-specific is forked (the engine's prefix cache)."""

    def __init__(self, model, layer: int, hidden, *, layout=None):
        self.model, self.layer, self.hidden, self.layout = model, layer, hidden, layout

    def _substitute(self, incoming):
        if incoming.shape != self.hidden.shape:
            raise RuntimeError(f"cached hidden states {tuple(self.hidden.shape)} do not fit layer {self.layer}'s "
                               f"input {tuple(incoming.shape)}")
        return self.hidden

    def _attach(self, attached: Attached) -> None:
        hf, layout = model_and_layout(self.model) if self.layout is None else (_hf(self.model), self.layout)
        layers = layout.layers(hf)
        attached.pre(layers[self.layer], _pre_keyword(self._substitute, "hidden_states"), with_kwargs=True)
        for i in range(self.layer):
            attached.swap(layers, i, _pass_through(layers[i]))


def _pass_through(original):
    """A stand-in for a decoder layer that returns its input hidden states unchanged."""
    stand_in = _stand_in_classes()["pass_through"]()
    # Some model forwards read per-layer attributes (mask type); keep them visible.
    for name in ("attention_type", "layer_type", "is_sliding", "sliding_window"):
        if hasattr(original, name):
            setattr(stand_in, name, getattr(original, name))
    return stand_in


def skip_layers(model, layers: Iterable[int], alpha: float | None = None) -> at:
    """Context manager: each decoder layer in ``layers`` passes its input through (``alpha`` None), or writes
    ``alpha`` times its update (x + alpha (f(x) - x)). The layer still runs (its KV cache entries are
    written but no later layer reads them through its output)."""
    edits: dict = {}
    for layer in layers:
        entering: dict = {}

        def keep(x, entering=entering):
            entering["x"] = x

        def replace(y, entering=entering):
            x = entering.pop("x")
            return x if alpha is None else x + alpha * (y - x)

        edits[f"L{int(layer)}.resid_pre"] = keep
        edits[f"L{int(layer)}.resid_post"] = replace
    return at(model, edits)


# -- callbacks around the model's own call -------------------------------------------------------------


class on_call(_Attaching):
    """Context manager: ``before(args, kwargs)`` before and ``after(args, kwargs, output)`` after every call of
    the model itself (not a point: what it is called with, e.g. to run a second model in step, or count)."""

    def __init__(self, model, before: Callable | None = None, after: Callable | None = None):
        self.hf, self.before, self.after = _hf(model), before, after

    def _attach(self, attached: Attached) -> None:
        if self.before is not None:
            attached.pre(self.hf, lambda _m, args, kwargs: self.before(args, kwargs), with_kwargs=True)
        if self.after is not None:
            attached.post(self.hf, lambda _m, args, kwargs, out: self.after(args, kwargs, out), with_kwargs=True)


class StopForward(Exception):
    """Raised by a function at a point once it has what it needs: ``run_until`` ends the forward there."""


def run_until(model, name: str, *args, edits: dict | None = None, **kwargs) -> None:
    """Call ``model(*args, **kwargs)`` and stop right after point ``name`` (the layers above never run),
    with ``edits`` attached meanwhile."""

    def stop(_x):
        raise StopForward

    edits = dict(edits or {})
    edits.setdefault(name, [])
    fns = edits[name] if isinstance(edits[name], list) else [edits[name]]
    edits[name] = [*fns, stop]
    try:
        with at(model, edits):
            _hf(model)(*args, **kwargs)
    except StopForward:
        pass


# -- the residual stream between attention and MLP ----------------------------------------------------


def _mid_child(hf, layout, layer: int) -> str | None:
    """The child of decoder layer ``layer`` whose input is the residual stream between attention and MLP, or
    None (a parallel block). Measured once per model with a short forward pass: it is the input m of the
    child call after which the layer's output is m + (the last child call's output) - the residual add
    around the MLP block - whatever the family calls its norms (Llama's post_attention_layernorm, GPT-2's
    ln_2, Gemma-2's pre_feedforward_layernorm, OLMo-2's mlp, OPT's final_layer_norm)."""
    cache = _cache(hf)
    if "mid" not in cache:
        cache["mid"] = _probe_mid(hf, layout)
    return cache["mid"][layer]


def _probe_mid(hf, layout) -> list:
    import torch

    layers = layout.layers(hf)
    calls: list[list] = [[] for _ in layers]
    outputs: list = [None] * len(layers)
    attached = Attached()
    for i, layer in enumerate(layers):
        for cname, child in layer.named_children():
            def pre(_m, args, kwargs, i=i, cname=cname):
                x = args[0] if args else next(iter(kwargs.values()), None)
                calls[i].append([cname, x, None])

            def post(_m, _args, out, i=i):
                calls[i][-1][2] = out[0] if isinstance(out, tuple) else out

            attached.pre(child, pre, with_kwargs=True)
            attached.post(child, post)

        def layer_out(_m, _args, out, i=i):
            outputs[i] = out[0] if isinstance(out, tuple) else out

        attached.post(layer, layer_out)
    vocab = getattr(text_config(hf.config), "vocab_size", 8)
    device = next(hf.parameters()).device
    ids = (torch.arange(5, device=device) % max(1, vocab - 3) + 3)[None]
    training = hf.training
    try:
        with attached, torch.no_grad():
            hf.eval()  # dropout would break the comparison below
            hf(input_ids=ids, use_cache=False)
    finally:
        hf.train(training)
    found = []
    for i in range(len(layers)):
        y, seq = outputs[i], [c for c in calls[i] if torch.is_tensor(c[1]) and torch.is_tensor(c[2])]
        name = None
        if y is not None and seq:
            last = seq[-1][2]
            for cname, x, _out in seq[1:]:
                if x.shape == y.shape == last.shape and torch.allclose(
                        (y - x).float(), last.float(), rtol=1e-4, atol=1e-5 * float(y.abs().max())):
                    name = cname
                    break
        found.append(name)
    return found


# -- what the points are, for `shb ls points` -----------------------------------------------------------


def describe(model: Any) -> list[tuple[str, str, str]]:
    """(name pattern, shape, what it is) for every point of ``model``, layers as ranges ``L{0..31}``; points
    the family lacks in some layers say where they are (hybrids, parallel blocks, mixtures of experts)."""
    hf, layout = model_and_layout(model)
    n_dec = layout.n_decoder_layers or layout.n_layers
    cfg = text_config(hf.config)
    sizes = {"d": layout.hidden_size, "H": layout.n_heads, "Hkv": layout.n_kv_heads, "D": layout.head_dim,
             "V": getattr(cfg, "vocab_size", "vocab"), "F": "d_ff",
             "qnote": " (after the q norm)" if layout.qk_norm != "none" else ""}
    rows = []

    def where(layers: list[int], n: int, what: str) -> str:
        if layers == list(range(n)):
            return f"{{0..{n - 1}}}"
        return "{" + ",".join(map(str, layers)) + "}" if layers else f"(none of the {n} {what})"

    for part in ATTN_PARTS:
        ok = []
        for layer in range(layout.n_layers):
            try:
                point(hf, f"L{layer}.attn.{part}", layout)
                ok.append(layer)
            except ValueError:
                pass
        shape, about = ABOUT["attn." + part]
        if ok:
            rows.append((f"L{where(ok, layout.n_layers, 'attention layers')}.attn.{part}", shape.format(**sizes),
                         about.format(**sizes)))
    for part in LAYER_PARTS:
        ok, ff = [], None
        for layer in range(n_dec):
            try:
                point(hf, f"L{layer}.{part}", layout)
                ok.append(layer)
                if part == "mlp.act" and ff is None:
                    ff = layout.mlp(hf, layer)[1]
            except ValueError:
                pass
        if ok:
            if ff is not None:
                w = ff.weight
                sizes["F"] = w.shape[0] if type(ff).__name__ == "Conv1D" else w.shape[1]
            shape, about = ABOUT[part]
            rows.append((f"L{where(ok, n_dec, 'decoder layers')}.{part}", shape.format(**sizes), about.format(**sizes)))
    rows.append((f"L{{0..{n_dec - 1}}}.<path>:in|out", "(module's own)",
                 "any submodule of the decoder layer by its path, e.g. "
                 f"L0.{next(n for n, _ in layout.layers(hf)[0].named_modules() if n)}:in (names are the family's)"))
    for name in GLOBAL_POINTS:
        shape, about = ABOUT[name]
        rows.append((name, shape.format(**sizes), about.format(**sizes)))
    if layout.hybrid:
        mapping = ", ".join(f"L{a}.attn = decoder layer {d}" for a, d in enumerate(layout.attention_layers))
        rows.append(("(hybrid)", "", f"attention layers count apart from decoder layers: {mapping}"))
    return rows
