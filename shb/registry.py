"""Every plug-in shb knows, in one place: name -> ("module:attr", one-line description).

Adding a model kind, dataset kind, ablation kind, metric or judge is a factory plus one line here (a
metric kind: one module, shb.metrics.base; README "Adding a metric").
Nothing in this module imports torch, so ``shb ls`` and ``shb validate`` stay instant.
"""

from __future__ import annotations

import difflib
import importlib

MODELS = {
    "toy": ("shb.models:load_toy_spec", "the built-in toy aligned chat model (trained on the CPU on first use)"),
    "hf": ("shb.models:load_hf_spec", "a Hugging Face causal LM from the hub or a local directory"),
}

DATASETS = {
    "advbench": ("shb.datasets:advbench", "AdvBench harmful behaviors (Zou et al. 2023), CSV goal column"),
    "jailbreakbench": ("shb.datasets:jailbreakbench", "JailbreakBench JBB-Behaviors harmful split, Goal column"),
    "maliciousinstruct": ("shb.datasets:maliciousinstruct", "MaliciousInstruct (Huang et al. 2024), one prompt a line"),
    "xstest": ("shb.datasets:xstest", "XSTest (Röttger et al. 2024): 250 safe prompts that look unsafe (label safe) or 200 unsafe contrasts"),
    "multijail": ("shb.datasets:multijail", "MultiJail (Deng et al. 2024): 315 harmful prompts in one of 10 languages (`language`), ids kept across languages"),
    "csv": ("shb.datasets:csv_file", "any CSV file; `column` names the prompt column"),
    "jsonl": ("shb.datasets:jsonl_file", "JSON lines; `column` names the prompt field"),
    "txt": ("shb.datasets:txt_file", "plain text, one prompt a line"),
    "alpaca": ("shb.datasets:alpaca", "harmless instructions, Stanford Alpaca JSON format (local file), records without input"),
    "toy-harmful": ("shb.datasets:toy_harmful", "held-out synthetic harmful requests of the toy model"),
    "toy-benign": ("shb.datasets:toy_benign", "held-out synthetic benign requests of the toy model"),
}

ABLATIONS = {
    "undifferentiated": ("shb.ablation", "query of the head times epsilon: attention flattened (paper Eq. 7)"),
    "scaling": ("shb.ablation", "output of the head times epsilon (paper Eq. 8, Scaling Contribution)"),
    "mean": ("shb.ablation", "query (or output, site=output) replaced by the mean over the layer's heads (App. A.2)"),
    "zero": ("shb.ablation", "output of the head set to zero (classic head pruning)"),
}

METRICS = {
    "ships": ("shb.metrics.ships:ShipsMetric", "per prompt and head: KL(p_base || p_ablated) at the last position (Eq. 9)"),
    "ships_dataset": ("shb.metrics.ships_dataset:ShipsDatasetMetric", "per head: principal angles between last-token subspaces (Eq. 11)"),
    "sahara": ("shb.metrics.sahara:SaharaMetric", "greedy head-set search (Algorithm 1), every candidate stored"),
    "asr": ("shb.metrics.asr:AsrMetric", "generate under ablation and judge: attack success rate"),
    "rdsha": ("shb.metrics.rdsha:RdshaMetric", "per head: last-token output along the refusal direction, |O_h . r| / ||r|| (Huang et al. 2025)"),
    "attention": ("shb.metrics.attention:AttentionMetric", "last position's attention over the prompt, for selected heads and a median head"),
    "utility": ("shb.metrics.utility:UtilityMetric", "lm-eval tasks, over-refusal and benign loss under an intervention, beside the unmodified model"),
}

JUDGES = {
    "keyword-paper": ("shb.judges.keyword:paper_judge", "the paper's 41 refusal keywords + length and repetition rules, bugs fixed"),
    "keyword-paper-periodic": ("shb.judges.keyword:paper_periodic_judge",
                               "keyword-paper with the narrower repetition rule: only an entirely periodic answer"),
    "keyword-gcg": ("shb.judges.keyword:gcg_judge", "GCG's refusal prefixes (Zou et al. 2023)"),
    "classifier": ("shb.judges.classifier:classifier_judge", "an LLM judge (HarmBench classifier or Llama Guard prompt)"),
}

# Interventions declared in a suite's `interventions` section (docs/design.md, "Interventions"). A fitted kind
# names a module with KIND, fit(lm, data, params) and intervention(artefact, params) (shb.baselines);
# "heads" is a fixed head set (no fit). Imported only when a run applies one.
INTERVENTIONS = {
    "heads": ("shb.interventions:HeadAblation", "a fixed head set ablated with an ablation kind (no fit)"),
    "points": ("shb.interventions:PointEdit", "your own edits of heads at named points: scale, zero or mean (no fit)"),
    "refusal_direction": ("shb.baselines.refusal_direction", "difference-of-means refusal direction projected out (Arditi et al. 2024)"),
    "layers": ("shb.baselines.layers", "contiguous layers skipped or scaled, chosen by refusal drop (LSP, Zhao et al. 2024; Li et al. 2024)"),
    "actsvd": ("shb.baselines.actsvd", "top-rank removal of W X, or the orthogonal variant (ActSVD, Wei et al. 2024)"),
    "setdiff": ("shb.baselines.setdiff", "prune top safety weights not in top utility weights, Wanda or SNIP (Wei et al. 2024)"),
    "attention_swap": ("shb.baselines.attention_swap", "attention (or MLP) weights loaded from a reference model (Zhou et al. 2025, Fig. 6a)"),
    "safety_neurons": ("shb.baselines.safety_neurons", "GTAC-ranked MLP neurons patched from a reference model, DAP (Chen et al. 2024)"),
}

# Architectures shb's attention layouts support (kept in sync with shb.models.layout.SUPPORTED by a test).
ARCHITECTURES = {
    "llama": "Llama 1/2/3 (grouped-query attention included), Vicuna",
    "mistral": "Mistral (grouped-query, sliding window)",
    "qwen2": "Qwen2 / Qwen2.5 (biases on q, k, v)",
    "gemma": "Gemma (head_dim != hidden / heads)",
    "gemma2": "Gemma-2 (logit soft-capping, sliding window)",
    "phi3": "Phi-3 (fused qkv_proj)",
    "gpt2": "GPT-2 (fused c_attn, Conv1D)",
    "gpt_neox": "GPT-NeoX / Pythia (fused query_key_value, interleaved per head)",
    "opt": "OPT",
    "qwen3": "Qwen3 (per-head q/k norm: hooked after the norm)",
    "qwen3_moe": "Qwen3-MoE (per-head q/k norm, MoE)",
    "gemma3_text": "Gemma-3 text (per-head q/k norm, sliding window, soft-capping)",
    "olmo2": "OLMo-2 (q/k norm across heads: hooked after the norm)",
    "olmo3": "OLMo-3 (q/k norm across heads, sliding window)",
    "smollm3": "SmolLM3 (NoPE layers)",
    "mixtral": "Mixtral (MoE, grouped-query)",
    "gpt_oss": "GPT-OSS (learned attention sinks, sliding window, MoE)",
    "cohere": "Cohere Command-R (per-head LayerNorm q/k norm when use_qk_norm)",
    "cohere2": "Cohere2 / Command R7B (sliding window, rotary on sliding layers only)",
    "glm4": "GLM-4 (partial rotary)",
    "granite": "Granite (attention multiplier)",
    "llama4_text": "Llama-4 text (shared qk_norm, chunked attention, NoPE layers, MoE)",
    "qwen3_next": "Qwen3-Next hybrid (linear-attention layers skipped in head names, gated query)",
    "jamba": "Jamba hybrid (Mamba layers skipped in head names)",
    "lfm2": "LFM2 hybrid (convolution layers skipped in head names, per-head q/k norm)",
}

TABLES = {"model": MODELS, "dataset": DATASETS, "ablation": ABLATIONS, "metric": METRICS, "judge": JUDGES,
          "intervention": INTERVENTIONS}


def closest(name: str, choices) -> str | None:
    """The closest known name to ``name``, for did-you-mean messages."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_message(what: str, name: str, choices) -> str:
    hint = closest(name, choices)
    known = ", ".join(sorted(choices))
    suggestion = f" (did you mean '{hint}'?)" if hint else ""
    return f"unknown {what} kind '{name}'{suggestion}; known: {known}"


def metric(kind: str):
    """The ``shb.metrics.base.Metric`` of a metric kind: its declarations (schema, defaults, identity, what
    it reads, its checks) and its run-time methods. Metric modules import torch only inside methods, so
    this is safe in ``shb validate`` and ``shb plan``."""
    return resolve(METRICS, kind, "metric")()


def resolve(table: dict, name: str, what: str):
    """Import and return the factory registered under ``name``."""
    if name not in table:
        from shb.errors import UsageError

        raise UsageError(unknown_message(what, name, table))
    target = table[name][0]
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj
