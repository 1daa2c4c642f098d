"""Interventions: anything that changes a model for the forward passes of a metric and restores it.

docs/design.md, "Interventions". A head ablation is one kind; the baselines of the paper's Table 1 (a
refusal direction projected out, a low-rank weight edit, pruned weights, patched neurons,
skipped layers) are others. Every intervention

- has an ``identity()``: JSON content (kind and parameters, fitted artefact hash) that unit ids
  hash and that results store, so two interventions never share a row because they share a label;
- is applied with ``applied(lm)``, a context manager (hooks or a weight swap) that always restores
  the model, so one loaded model serves every intervention in turn;
- answers ``parameters_modified(lm)`` with two numbers measured from the edit itself: weight
  entries that change, and the edit's degrees of freedom (a rank-r edit of a d_out x d_in matrix:
  r (d_in + d_out); a direction: d; a head: its slice, biases included).

No torch at import time.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, ContextManager


@dataclass(frozen=True)
class ParamCount:
    """The cost of an intervention, one definition for every method (README "Cost of a method").

    entries: weight (and bias) entries whose value changes; an intervention on activations (head
      hooks, patched neurons, a direction projected out by hooks) counts the entries of the weights
      whose output it overrides, so a hook and its weight form count alike.
    dof: values the method chooses or fits: one per index it picks (a head, a layer, a neuron, a
      pruned entry) and one per number it fits (a direction's d values, low-rank factors); fixed
      constants given by the method (epsilon, a scale of 1.1) are not counted.
    Extra model runs at inference (DAP's reference model) are a column of their own in the reports
    (shb.reports.efficiency.EXTRA_RUNS), never folded into these counts.
    """

    entries: int   # weight (and bias) entries whose value changes
    dof: int       # values chosen or fitted

    def share(self, n_params: int) -> tuple[float, float]:
        """(entries, dof) as fractions of the model's parameters."""
        if not n_params:
            return float("nan"), float("nan")
        return self.entries / n_params, self.dof / n_params


class Intervention:
    """Base class. Subclasses set ``kind`` and implement the three methods."""

    kind = ""

    def identity(self) -> dict:
        raise NotImplementedError

    def applied(self, lm: Any) -> ContextManager:
        raise NotImplementedError

    def parameters_modified(self, lm: Any) -> ParamCount:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.kind


class NoIntervention(Intervention):
    """The unmodified model (the baseline row of every comparison)."""

    kind = "none"

    def identity(self) -> dict:
        return {"kind": "none"}

    def applied(self, lm: Any) -> ContextManager:
        return contextlib.nullcontext()

    def parameters_modified(self, lm: Any) -> ParamCount:
        return ParamCount(0, 0)


@dataclass(frozen=True)
class HeadAblation(Intervention):
    """A fixed set of heads ablated with one of shb.ablation's kinds (the paper's intervention)."""

    heads: tuple[tuple[int, int], ...]
    ablation: str = "undifferentiated"     # shb.ablation kind
    epsilon: float = 1e-5
    site: str | None = None

    kind = "heads"

    def identity(self) -> dict:
        from shb.ablation import format_head

        return {"kind": "heads", "heads": [format_head(h) for h in self.heads], "ablation": self.ablation,
                "epsilon": self.epsilon, "site": self.site}

    def applied(self, lm: Any) -> ContextManager:
        from shb.ablation import ablate

        return ablate(lm, list(self.heads), kind=self.ablation, epsilon=self.epsilon, site=self.site)

    def parameters_modified(self, lm: Any) -> ParamCount:
        from shb.ablation import parameters_modified

        if not self.heads:
            return ParamCount(0, 0)
        # A head's edit is its slice of one projection (biases included): every entry of the slice
        # changes. What the method chooses is the k heads (epsilon is fixed by the paper).
        kind, site = self.ablation, self.site
        if kind == "mean":
            # The mean ablation replaces activations, not weights (it cannot be baked), so no stored
            # weight changes; like the safety neurons, the slice it overrides is counted: the head's
            # query rows (site q, as undifferentiated) or its o_proj columns (site output, as scaling).
            kind, site = ("scaling", None) if site == "output" else ("undifferentiated", site)
        count, _ = parameters_modified(lm, list(self.heads), kind, site)
        return ParamCount(count, len(set(self.heads)))

    @property
    def label(self) -> str:
        from shb.ablation import format_head

        return f"heads {','.join(format_head(h) for h in self.heads) or '(none)'} ({self.ablation})"


POINT_OPS = {
    "scale": "the heads' features times `factor` (ASGuard's 0.5, a 1.5 amplification, ...)",
    "zero": "the heads' features set to zero",
    "mean": "the heads' features replaced by their mean over all heads of the point (per position)",
}
_HEAD_POINT = re.compile(r"^L([0-9]+)\.attn\.(q|k|v|head_out)$")


@dataclass(frozen=True)
class PointEdit(Intervention):
    """A researcher's own head intervention, declared in a suite against the named points of shb.hooks::

        {"id": "asguard", "kind": "points",
         "edits": [{"point": "L1.attn.head_out", "heads": [3], "op": "scale", "factor": 0.5}]}

    Each edit acts on some heads of one head point (``L<l>.attn.q``, ``.k``, ``.v`` (kv heads there) or
    ``.head_out``, the head's own output before the output projection) with an op of POINT_OPS; edits
    of one point apply in the order given. Declarative on purpose: a suite names no code to import, and
    its content is its identity. From Python, any function at any point: ``shb.hooks.at``.
    """

    edits: tuple[tuple[str, tuple[int, ...], str, float | None], ...]   # (point, heads, op, factor)

    kind = "points"

    @classmethod
    def from_params(cls, params: dict, where: str = "points") -> PointEdit:
        """From a suite entry's parameters (``{"edits": [...]}``); UsageError naming the bad edit."""
        from shb.errors import UsageError

        edits = params.get("edits")
        if not isinstance(edits, list) or not edits:
            raise UsageError(f"{where}: `edits` must be a non-empty list of {{point, heads, op[, factor]}}")
        out = []
        for i, e in enumerate(edits):
            at = f"{where}/edits/{i}"
            if not isinstance(e, dict):
                raise UsageError(f"{at}: an edit is an object {{point, heads, op[, factor]}}, got {e!r}")
            unknown = set(e) - {"point", "heads", "op", "factor"}
            if unknown:
                raise UsageError(f"{at}: unknown key(s) {sorted(unknown)}; an edit has point, heads, op, factor")
            point, heads, op, factor = e.get("point"), e.get("heads"), e.get("op"), e.get("factor")
            if not isinstance(point, str) or not _HEAD_POINT.match(point):
                raise UsageError(f"{at}/point: {point!r} is not a head point; write L<layer>.attn.q, .k, .v or "
                                 ".head_out (e.g. L1.attn.head_out)")
            if (not isinstance(heads, list) or not heads
                    or any(isinstance(h, bool) or not isinstance(h, int) or h < 0 for h in heads)):
                raise UsageError(f"{at}/heads: a non-empty list of head indices (integers >= 0), got {heads!r}")
            if op not in POINT_OPS:
                raise UsageError(f"{at}/op: {op!r} is not an op; choose one of {', '.join(POINT_OPS)}")
            if (op == "scale") != (factor is not None):
                raise UsageError(f"{at}/factor: " + ("op 'scale' needs a factor (a number)" if op == "scale"
                                                      else f"op '{op}' takes no factor"))
            if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
                raise UsageError(f"{at}/factor: a number, got {factor!r}")
            out.append((point, tuple(sorted(set(heads))), op, None if factor is None else float(factor)))
        return cls(tuple(out))

    def identity(self) -> dict:
        return {"kind": "points", "edits": [{"point": p, "heads": list(h), "op": op,
                                             **({"factor": f} if f is not None else {})}
                                            for p, h, op, f in self.edits]}

    def _checked(self, lm):
        """(point, heads, op, factor, attention layer, which) with layers and heads checked against ``lm``."""
        from shb.errors import UsageError

        layout = lm.layout
        out = []
        for i, (point, heads, op, factor) in enumerate(self.edits):
            m = _HEAD_POINT.match(point)
            layer, which = int(m.group(1)), m.group(2)
            n = layout.n_kv_heads if which in ("k", "v") else layout.n_heads
            if layer >= layout.n_layers or heads[-1] >= n:
                raise UsageError(f"points edit {i} ({point}, heads {list(heads)}): outside {layout.geometry()}; "
                                 f"layers 0-{layout.n_layers - 1}, {'kv ' if n != layout.n_heads else ''}heads 0-{n - 1}")
            out.append((point, heads, op, factor, layer, which))
        return out

    def applied(self, lm: Any) -> ContextManager:
        from shb import hooks

        by_point: dict = {}
        for point, heads, op, factor, _layer, _which in self._checked(lm):
            by_point.setdefault(point, []).append(_head_op(heads, op, factor))
        return hooks.at(lm, by_point)

    def parameters_modified(self, lm: Any) -> ParamCount:
        """entries: per edited head, the weights whose output it overrides (its rows of the q/k/v projection,
        bias included) or that read it (its columns of the output projection); dof: the heads chosen."""
        layout = lm.layout
        chosen = set()
        entries = 0
        for point, heads, _op, _factor, _layer, which in self._checked(lm):
            proj = {"q": layout.query_proj or layout.query, "k": layout.key_proj or layout.key,
                    "v": layout.value, "head_out": layout.output}[which]
            per_head = layout.head_dim * layout.hidden_size + (layout.head_dim if which != "head_out" and proj
                                                               and proj.bias else 0)
            for h in heads:
                if (point, h) not in chosen:
                    chosen.add((point, h))
                    entries += per_head
        return ParamCount(entries, len(chosen))

    @property
    def label(self) -> str:
        parts = [f"{p}[{','.join(map(str, h))}] {op}{'' if f is None else f' {f:g}'}" for p, h, op, f in self.edits]
        return "points " + "; ".join(parts)


def _head_op(heads: tuple[int, ...], op: str, factor: float | None):
    """The function at a head point (x: (B, T, H, D)) for one edit: the ablations' own (shb.ablation.head_edit)
    with the op's per-head multiplier, or mean mask, built when the point's head count is known."""
    from shb.ablation import head_edit

    def fn(x):
        import torch

        scale = torch.ones(1, x.shape[2], dtype=torch.float32)
        mask = None
        if op == "mean":  # the mean over every head of the point, per position
            mask = torch.zeros(1, x.shape[2], dtype=torch.bool)
            mask[0, list(heads)] = True
        else:
            scale[0, list(heads)] = 0.0 if op == "zero" else factor
        return head_edit(scale, mask)(x)

    return fn
