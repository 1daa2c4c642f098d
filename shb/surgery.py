"""Bake a head ablation into the weights and write an ordinary Hugging Face checkpoint.

The checkpoint (safetensors weights, config, tokenizer, README.md model card, and
shb_ablation.json with the same facts for machines) loads with plain
`AutoModelForCausalLM.from_pretrained` and serves anywhere, without shb.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shb import ablation


def _edited_tensors(hf, heads, kind, epsilon, site):
    """The weight/bias tensors `bake` will touch (so the caller's model can be restored)."""
    tensors = {}
    for _layer, _h, module, _proj, _edit in ablation.bake_targets(hf, heads, kind, epsilon, site):
        for p in (module.weight, getattr(module, "bias", None)):
            if p is not None:
                tensors[id(p)] = p
    return list(tensors.values())


def export(
    model_or_lm: Any,
    tokenizer: Any,
    heads,
    kind: str = "undifferentiated",
    epsilon: float = 1e-5,
    site: str | None = None,
    out: str | Path = "ablated",
    *,
    overwrite: bool = False,
) -> dict:
    """Write `model_or_lm` with `heads` ablated (baked into the weights) to the directory `out`.

    The caller's model is left as it was: the edited tensors are copied before baking and
    restored after saving. `tokenizer` may be None (then `model_or_lm.tokenizer` if it has one).
    Returns a summary dict (also written as shb_ablation.json).
    """
    import torch

    hf, layout = ablation._resolve(model_or_lm)
    site = ablation._check_kind_site(kind, site, layout)
    if kind == "mean":
        raise ValueError(ablation._MEAN_BAKE_ERROR)
    heads = ablation._check_heads(heads, layout)
    if not heads:
        raise ValueError("no heads given: an export without ablated heads would be a plain copy of the model")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another directory or pass overwrite=True")
    tokenizer = tokenizer if tokenizer is not None else getattr(model_or_lm, "tokenizer", None)
    factor = 0.0 if kind == "zero" else float(epsilon)
    count, share = ablation.parameters_modified(layout, heads, kind, site, epsilon=factor)

    originals = [(p, p.detach().clone()) for p in _edited_tensors(hf, heads, kind, epsilon, site)]
    try:
        baked = ablation.bake(hf, heads, kind, epsilon, site)
        if baked != count:  # both count the same edit; a mismatch is a bug in shb, not bad input
            raise AssertionError(f"bake edited {baked} parameters but parameters_modified says {count}")
        out.mkdir(parents=True, exist_ok=True)
        save_plain(hf, out)
    finally:
        with torch.no_grad():
            for p, saved in originals:
                p.copy_(saved)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)

    summary = {
        "base_model": getattr(hf.config, "_name_or_path", "") or "",
        "arch": layout.arch,
        "heads": [ablation.format_head(h) for h in heads],
        "kind": kind,
        "site": site,
        "epsilon": 0.0 if kind == "zero" else float(epsilon),
        "parameters_modified": count,
        "parameters_total": layout.n_params,
        "share_modified": share,
        "out": str(out),
    }
    (out / "shb_ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "README.md").write_text(_model_card(summary, layout))
    summary["files"] = sorted(p.name for p in out.iterdir())
    return summary


def save_plain(hf, out: Path) -> None:
    """``save_pretrained``, also for a model loaded from GGUF, which transformers refuses to serialize
    ("quantized with gguf"): its weights are already dequantized, so they go into a fresh model of the
    same class whose config carries no quantization_config, sharing the tensors (no copy). The
    directory is plain safetensors; config.json also gets a top-level ``rope_theta`` for readers older
    than transformers 5, which look for it there (docs/design.md, "A real model without a hub")."""
    if getattr(hf, "hf_quantizer", None) is None and getattr(hf.config, "quantization_config", None) is None:
        hf.save_pretrained(out)
        return
    import copy

    import torch

    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(hf)(config)
    plain.load_state_dict(hf.state_dict(), assign=True)  # tied weights stay tied: one tensor under both names
    plain.tie_weights()
    plain.eval()
    plain.save_pretrained(out)
    _top_level_rope_theta(out / "config.json")


def _top_level_rope_theta(config_file: Path) -> None:
    data = json.loads(config_file.read_text())
    theta = (data.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in data:
        data["rope_theta"] = theta
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _model_card(s: dict, layout) -> str:
    where = {"q": "query rows (weights and bias) of", "k": "key rows (weights and bias) of",
             "output": "output-projection input columns that read"}[s["site"]]
    if s["site"] in ("q", "k") and layout.qk_norm != "none" and layout.norm_weight == "per_head":
        where = f"{'query' if s['site'] == 'q' else 'key'} norm weights (after the normalisation) of"
    base = s["base_model"] or "(unnamed local model)"
    return f"""---
tags:
- shb
- head-ablation
---
# {base} with {len(s['heads'])} attention head(s) ablated

Made by shb (safety-head bench), `shb surgery`. This is an ordinary checkpoint: it loads with
`AutoModelForCausalLM.from_pretrained` and needs no shb code.

| | |
|---|---|
| base model | {base} ({s['arch']}, {layout.n_layers} layers x {layout.n_heads} heads, head_dim {layout.head_dim}) |
| heads (layer-head, 0-indexed) | {", ".join(s['heads'])} |
| ablation kind | `{s['kind']}` ({ablation.KINDS[s['kind']]}) |
| site | `{s['site']}`: the {where} each head, multiplied by epsilon |
| epsilon | {s['epsilon']:g} |
| parameters modified | {s['parameters_modified']:,} of {s['parameters_total']:,} ({100 * s['share_modified']:.4f}%) |

The same facts are in `shb_ablation.json`.
"""
