"""Every plug-in shb knows, in one place: name -> ("module:attr", one-line description).

Adding a model kind, dataset kind, ablation kind, metric or judge is a factory plus one line here.
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
    "csv": ("shb.datasets:csv_file", "any CSV file; `column` names the prompt column"),
    "jsonl": ("shb.datasets:jsonl_file", "JSON lines; `column` names the prompt field"),
    "txt": ("shb.datasets:txt_file", "plain text, one prompt a line"),
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
}

JUDGES = {
    "keyword-paper": ("shb.judges.keyword:paper_judge", "the paper's 41 refusal keywords + length and repetition rules, bugs fixed"),
    "keyword-paper-periodic": ("shb.judges.keyword:paper_periodic_judge",
                               "keyword-paper with the narrower repetition rule: only an entirely periodic answer"),
    "keyword-gcg": ("shb.judges.keyword:gcg_judge", "GCG's refusal prefixes (Zou et al. 2023)"),
    "classifier": ("shb.judges.classifier:classifier_judge", "an LLM judge (HarmBench classifier or Llama Guard prompt)"),
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
}

TABLES = {"model": MODELS, "dataset": DATASETS, "ablation": ABLATIONS, "metric": METRICS, "judge": JUDGES}


def closest(name: str, choices) -> str | None:
    """The closest known name to ``name``, for did-you-mean messages."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_message(what: str, name: str, choices) -> str:
    hint = closest(name, choices)
    known = ", ".join(sorted(choices))
    suggestion = f" (did you mean '{hint}'?)" if hint else ""
    return f"unknown {what} kind '{name}'{suggestion}; known: {known}"


def resolve(table: dict, name: str, what: str):
    """Import and return the factory registered under ``name``."""
    if name not in table:
        from shb.errors import UsageError

        raise UsageError(unknown_message(what, name, table))
    target = table[name][0]
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj
