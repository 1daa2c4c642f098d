"""Safety layers: the contiguous run of decoder layers whose removal most lowers refusal.

Two published locators, one procedure (Zhou et al.'s Table 1 row "LSP", layer-specific pruning,
Zhao et al. 2024; and the "safety layers" of Li et al. 2024):

- candidates: every run [s, s + w) of ``widths`` consecutive layers (default widths [1]; LED's
  analysis uses runs of 3-8 from the early layers, restrict with ``first``/``last``);
- ``mode: "skip"`` (LED's pruning analysis, arXiv 2405.18166: each layer of the run passes its
  input through). Score: greedy answers of ``max_new_tokens`` tokens (the fit data's) to the
  harmful fit prompts, judged by ``judge`` (keyword-paper); the chosen run is the one with the
  lowest refusal rate (ties: narrower, then earlier);
- ``mode: "scale"`` (Li et al., "Safety Layers in Aligned LLMs", arXiv 2408.17003, their
  ``scaling.py``): every weight matrix of the run's attention and MLP times ``alpha`` (their
  default 1.1, an up-scaling), greedy answers to over-rejection prompts (benign requests: the fit
  data's harmless prompts), and the chosen run is the one whose scaling raises the refusal rate
  there most (the safety layers make the model over-refuse when amplified); ties as above.
  Applied at measurement, the run stays scaled by ``alpha``.
Every candidate's rate is stored.

Parameters modified: a skipped layer removes all of its parameters (entries: the layer's parameter
count); scaling changes every entry of the scaled matrices (counted from the edit). Values chosen:
the layers (alpha is the method's constant, not fitted).
"""

from __future__ import annotations

import contextlib

from shb.baselines.base import Artefact, FitData, answers_work, fit_cost
from shb.errors import UsageError
from shb.interventions import Intervention, ParamCount

KIND = "layers"
DEFAULTS = {"widths": [1], "mode": "skip", "alpha": None, "first": 0, "last": None, "judge": "keyword-paper",
            "batch_size": 16}


def options(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"layers: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **params}
    if opts["mode"] not in ("skip", "scale"):
        raise UsageError(f"layers: mode must be 'skip' or 'scale', got {opts['mode']!r}")
    if opts["alpha"] is None:
        opts["alpha"] = LI_ALPHA if opts["mode"] == "scale" else 0.0
    return opts


LI_ALPHA = 1.1  # Li et al.'s scaling factor (scaling.py default)


def runs(n_layers: int, opts: dict) -> list[tuple[int, ...]]:
    last = n_layers - 1 if opts["last"] is None else min(opts["last"], n_layers - 1)
    out = []
    for width in sorted(set(opts["widths"])):
        for start in range(opts["first"], last - width + 2):
            out.append(tuple(range(start, start + width)))
    if not out:
        raise UsageError(f"layers: no run of widths {opts['widths']} fits layers {opts['first']}..{last}")
    return out


def refusal_rate(lm, prompts: list[str], max_new_tokens: int, judge, batch_size: int) -> float:
    from shb.generate import generate

    answers = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    verdicts = judge.judge(prompts, [a.text for a in answers])
    return sum(not v.harmful for v in verdicts) / len(verdicts)


def fit_work(params: dict, n_harmful: int, n_harmless: int, n_layers: int, max_new_tokens: int) -> dict:
    """Forward-pass equivalents of ``fit``: the scored prompts' greedy answers, unmodified and under every run."""
    opts = options(params)
    n = n_harmless if opts["mode"] == "scale" else n_harmful
    return fit_cost(generate=(len(runs(n_layers, opts)) + 1) * answers_work(n, max_new_tokens))


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    import torch

    from shb import judges

    opts = options(params)
    scale = opts["mode"] == "scale"
    prompts = data.harmless if scale else data.harmful   # Li et al. locate by over-rejection
    if not prompts:
        raise UsageError(f"layers: mode '{opts['mode']}' fits on {'harmless' if scale else 'harmful'} prompts;"
                         f" give fit.{'harmless' if scale else 'harmful'}")
    judge = judges.get(opts["judge"])
    rate = lambda: refusal_rate(lm, prompts, data.max_new_tokens, judge, opts["batch_size"])  # noqa: E731
    base = rate()
    rows = []
    for run in runs(lm.n_layers, opts):
        with LayerEdit(run, opts["mode"], opts["alpha"]).applied(lm):
            rows.append({"layers": list(run), "refusal_rate": rate()})
        if progress is not None:
            progress(1)
    # skip: the run whose removal refuses least; scale: the run whose up-scaling over-refuses most
    sign = -1 if scale else 1
    best = min(rows, key=lambda r: (sign * r["refusal_rate"], len(r["layers"]), r["layers"][0]))
    meta = {"base_refusal_rate": base, "selected": best, "candidates": rows, "mode": opts["mode"],
            "scored_on": "harmless (over-rejection)" if scale else "harmful",
            "alpha": opts["alpha"], "judge": opts["judge"], "max_new_tokens": data.max_new_tokens,
            "n_prompts": len(prompts)}
    return Artefact(KIND, {"layers": torch.tensor(best["layers"], dtype=torch.long)}, meta)


def scaled_modules(lm, layer: int):
    """Every weight matrix (2-D parameter) of a decoder layer's attention and MLP, norms excluded."""
    module = lm.layout.layers(lm.model)[layer]
    return [p for name, p in module.named_parameters() if p.dim() == 2 and "norm" not in name]


class LayerEdit(Intervention):
    kind = KIND

    def __init__(self, layers, mode: str = "skip", alpha: float = 0.0, fit_hash: str | None = None):
        self.layers = tuple(int(x) for x in layers)
        self.mode, self.alpha, self.fit_hash = mode, float(alpha), fit_hash

    def identity(self) -> dict:
        return {"kind": KIND, "layers": list(self.layers), "mode": self.mode,
                "alpha": self.alpha if self.mode == "scale" else None, "artefact": self.fit_hash}

    def applied(self, lm):
        if self.mode == "skip":
            from shb import hooks

            return hooks.skip_layers(lm, self.layers)
        return self._scaled(lm)

    @contextlib.contextmanager
    def _scaled(self, lm):
        saved = []
        try:
            for layer in self.layers:
                for p in scaled_modules(lm, layer):
                    saved.append((p, p.data.clone()))
                    p.data.mul_(self.alpha)
            yield
        finally:
            for p, old in saved:
                p.data.copy_(old)

    def parameters_modified(self, lm) -> ParamCount:
        decoder = lm.layout.layers(lm.model)
        if self.mode == "skip":
            n = sum(p.numel() for layer in self.layers for p in decoder[layer].parameters())
            return ParamCount(n, len(self.layers))   # the layers chosen
        entries = sum(int((p.data * self.alpha != p.data).sum()) for layer in self.layers
                      for p in scaled_modules(lm, layer))
        # What it edits is every entry of the scaled matrices; what it chooses is the layers (the
        # scale is a constant of the method, Li et al.'s 1.1, not fitted).
        return ParamCount(entries, len(self.layers))

    @property
    def label(self) -> str:
        span = f"{self.layers[0]}-{self.layers[-1]}" if len(self.layers) > 1 else str(self.layers[0])
        return f"layers {span} ({self.mode})"


def intervention(artefact: Artefact, params: dict) -> LayerEdit:
    opts = options(params)
    return LayerEdit(artefact.tensors["layers"].tolist(), opts["mode"], opts["alpha"], artefact.meta.get("_sha256"))
