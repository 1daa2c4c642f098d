"""Interventions: anything that changes a model for the forward passes of a metric and restores it.

DESIGN.md section 8. A head ablation is one kind; the baselines of the paper's Table 1 (a
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
