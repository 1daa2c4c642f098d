"""Attention swap: the aligned model with its attention (or MLP) weights loaded from a reference model.

Zhou et al. 2025 ("On the Role of Attention Heads in Large Language Model Safety", ICLR 2025,
Sec. 5, Fig. 6a) load the attention parameters of the base model (Llama-2-7b) into the aligned
chat model and find safety largely kept: attention-level safety, they conclude, comes mostly from
pre-training. Swapping the MLP instead is the control. Here, while the intervention is applied,
every parameter of the chosen component of every decoder layer - the attention module (its q, k,
v, o projections, biases, q/k norms, sinks: whatever the module holds) or the ``mlp`` submodule -
is the reference model's; the layer norms around them, embeddings and the head stay the aligned
model's. The original tensors are kept and put back on exit, so restoring is bit-exact.

Fit (``fit: {"reference": <model id>}``; no prompts): checks that the reference has the same
parameter names and shapes for the component, and stores which parameters are swapped and a
SHA-256 of the reference's tensors (the artefact's identity follows the reference's content).

Parameters modified: entries that differ between the two models' swapped tensors; degrees of
freedom: every entry swapped (the whole component is replaced, whatever it held).
"""

from __future__ import annotations

import contextlib
import hashlib

from shb.baselines.base import Artefact, FitData
from shb.errors import UsageError
from shb.interventions import Intervention, ParamCount

KIND = "attention_swap"
COMPONENTS = ("attention", "mlp")
DEFAULTS = {"component": "attention"}


def options(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"attention_swap: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **params}
    if opts["component"] not in COMPONENTS:
        raise UsageError(f"attention_swap: component must be one of {', '.join(COMPONENTS)}, got {opts['component']!r}")
    return opts


def component_parameters(lm, component: str) -> dict:
    """name (as in ``lm.model.named_parameters()``) -> parameter, for the component of every decoder layer."""
    layout = lm.layout
    modules = []
    if component == "attention":
        modules = [layout.attention(lm.model, layer) for layer in range(layout.n_layers)]
    else:
        for block in layout.layers(lm.model):
            mlp = getattr(block, "mlp", None) or getattr(block, "feed_forward", None)
            if mlp is None:
                raise UsageError(f"attention_swap: no `mlp` submodule in {type(block).__name__}; use component attention")
            modules.append(mlp)
    wanted = {id(p) for m in modules for p in m.parameters()}
    return {name: p for name, p in lm.model.named_parameters() if id(p) in wanted}


def _paired(lm, reference, component: str) -> list[tuple[str, object, object]]:
    mine = component_parameters(lm, component)
    theirs = component_parameters(reference, component)
    if set(mine) != set(theirs):
        missing = sorted(set(mine) ^ set(theirs))[:3]
        raise UsageError(f"attention_swap: the reference's {component} parameters differ in name from the model's "
                         f"(e.g. {missing}): the reference must share the model's architecture")
    bad = [n for n in mine if mine[n].shape != theirs[n].shape]
    if bad:
        raise UsageError(f"attention_swap: {bad[0]} has shape {tuple(theirs[bad[0]].shape)} in the reference, "
                         f"{tuple(mine[bad[0]].shape)} in the model: the reference must share the model's geometry")
    return [(n, mine[n], theirs[n]) for n in sorted(mine)]


def reference_digest(pairs) -> str:
    digest = hashlib.sha256()
    for name, _, ref in pairs:
        digest.update(name.encode())
        digest.update(ref.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    opts = options(params)
    if data.reference is None:
        raise UsageError("attention_swap: set fit.reference, the model whose weights are loaded")
    pairs = _paired(lm, data.reference, opts["component"])
    meta = {"component": opts["component"], "parameters": [n for n, _, _ in pairs],
            "entries": sum(int(p.numel()) for _, p, _ in pairs), "reference_sha256": reference_digest(pairs)}
    return Artefact(KIND, {}, meta)


class AttentionSwap(Intervention):
    kind = KIND

    def __init__(self, artefact: Artefact, params: dict, reference):
        if reference is None:
            raise UsageError("attention_swap: needs its reference model (fit.reference)")
        self.opts = options(params)
        self.reference = reference
        self.digest = artefact.meta.get("_sha256") or artefact.sha256()
        self.names = list(artefact.meta.get("parameters") or [])

    def identity(self) -> dict:
        return {"kind": KIND, "component": self.opts["component"], "artefact": self.digest}

    @contextlib.contextmanager
    def _swapped(self, lm):
        pairs = _paired(lm, self.reference, self.opts["component"])
        if self.names and [n for n, _, _ in pairs] != self.names:
            raise UsageError("attention_swap: the model's parameters are not the ones its fit recorded")
        saved = []
        try:
            for _, param, ref in pairs:
                saved.append((param, param.data))
                # a copy in the model's dtype and device: the reference's own tensors are never aliased
                param.data = ref.detach().to(device=param.device, dtype=param.dtype).clone()
            yield
        finally:
            for param, original in reversed(saved):
                param.data = original

    def applied(self, lm):
        return self._swapped(lm)

    def parameters_modified(self, lm) -> ParamCount:
        pairs = _paired(lm, self.reference, self.opts["component"])
        changed = sum(int((p.detach() != r.detach().to(device=p.device, dtype=p.dtype)).sum()) for _, p, r in pairs)
        return ParamCount(changed, sum(int(p.numel()) for _, p, _ in pairs))

    @property
    def label(self) -> str:
        return f"{self.opts['component']} from the reference"


def intervention(artefact: Artefact, params: dict, reference=None) -> AttentionSwap:
    """``reference``: the model (a LoadedModel) whose weights are loaded."""
    return AttentionSwap(artefact, params, reference)
