"""Utility after an intervention: is the model still able to do ordinary work? (issue 12)

The paper's second claim (Zhou et al. 2025, Sec. 4.3 and Fig. 6b) is that ablating the safety
heads leaves utility intact: zero-shot accuracy on BoolQ, RTE, WinoGrande, ARC-Challenge and
OpenBookQA measured with lm-evaluation-harness. shb measures three parts, each under the same
intervention and beside the unmodified model:

- ``lmeval``: any lm-evaluation-harness task (registry name or local YAML), run on the loaded model
  with the intervention active during lm-eval's forward passes (``shb.utility.lmeval``);
- over-refusal: the refusal rate on benign prompts, generated with ``shb.generate`` and judged by
  the keyword judges of ASR (``shb.metrics.utility``);
- ``loss``: mean next-token negative log-likelihood on a benign text set (``shb.utility.loss``).

``spec`` (no torch) reads and checks the metric's parameters; ``toytasks`` writes local
multiple-choice tasks the toy model can answer, for offline tests and paper-mini.
"""
