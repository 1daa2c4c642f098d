"""Weight surgery: baked weights compute what the hooks compute, and the exported
checkpoint reloads with plain transformers (no shb code) to the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from shb import ablation as A
from shb import surgery
from shb.models import layout as L

# tests/integration may or may not be a package (an __init__.py); import the builders either way
try:
    from .test_ablation_models import ARCHS, forward, left_pad, prompts, tiny_model
except ImportError:
    from test_ablation_models import ARCHS, forward, left_pad, prompts, tiny_model

TOL = {"rtol": 0, "atol": 1e-5}
HEADS = [(0, 1), (1, 3), (1, 0)]


def _cases(arch):
    cases = [("undifferentiated", 1e-5, None), ("undifferentiated", 0.0, None), ("scaling", 0.3, None), ("zero", 0.0, None)]
    if L.detect(tiny_model(arch).config).n_kv_heads == 4:
        cases.append(("undifferentiated", 0.0, "k"))
    return cases


@pytest.mark.parametrize("arch", ARCHS)
def test_baked_equals_hooked(arch):
    ids, mask, pos = left_pad(prompts(2, lengths=(6, 4)))
    for kind, eps, site in _cases(arch):
        model = tiny_model(arch)
        with A.ablate(model, HEADS, kind, epsilon=eps, site=site):
            hooked = forward(model, ids, mask, pos).logits
        before = {k: v.clone() for k, v in model.state_dict().items()}
        count = A.bake(model, HEADS, kind, epsilon=eps, site=site)
        baked = forward(model, ids, mask, pos).logits
        real = mask.bool()
        torch.testing.assert_close(baked[real], hooked[real], **TOL, msg=f"{kind} eps={eps} site={site}")
        # count the entries that actually changed, independently of shb's bookkeeping
        changed = sum(int((before[k] != v).sum()) for k, v in model.state_dict().items())
        if eps != 1.0:
            assert changed == count == A.parameters_modified(tiny_model(arch), HEADS, kind, site)[0], (kind, site)


def _expected_count(cfg, n_heads_ablated, query_side):
    """Per head: head_dim x hidden weights, plus head_dim bias entries on the query side if it has a bias."""
    hidden = cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    bias = {"llama": bool(getattr(cfg, "attention_bias", False)), "qwen2": True, "gpt2": True, "gpt_neox": True,
            "phi3": False, "opt": True, "mistral": False, "gemma": False, "gemma2": False}[cfg.model_type]
    return n_heads_ablated * (head_dim * hidden + (head_dim if bias and query_side else 0))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2", "gpt_neox", "gemma"])
def test_parameter_counts_from_config(arch):
    """GQA (llama, qwen2), fused (phi3, gpt2, gpt_neox), head_dim != hidden/heads (gemma)."""
    model = tiny_model(arch)
    total = sum(p.numel() for p in model.parameters())
    for kind, query_side in (("undifferentiated", True), ("scaling", False)):
        count, share = A.parameters_modified(model, HEADS, kind)
        assert count == _expected_count(model.config, len(HEADS), query_side)
        assert share == pytest.approx(count / total)
    # the same head twice is one head
    assert A.parameters_modified(model, HEADS + HEADS[:1], "zero")[0] == A.parameters_modified(model, HEADS, "zero")[0]


def test_mean_cannot_be_baked(tmp_path):
    model = tiny_model("llama")
    for call in (lambda: A.bake(model, HEADS, "mean"), lambda: A.parameters_modified(model, HEADS, "mean"),
                 lambda: surgery.export(model, None, HEADS, "mean", 0.0, None, tmp_path / "x")):
        with pytest.raises(ValueError, match="cannot be baked"):
            call()
    assert not (tmp_path / "x").exists()


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 61)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip_with_plain_transformers(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch)
    ids, mask, pos = left_pad(prompts(2, lengths=(6, 4)))
    base = forward(model, ids, mask, pos).logits
    kind, eps = ("undifferentiated", 0.0) if arch != "gpt2" else ("scaling", 0.5)
    with A.ablate(model, HEADS, kind, epsilon=eps):
        hooked = forward(model, ids, mask, pos).logits
    tok = _tiny_tokenizer() if arch in ("llama", "gpt2") else None
    summary = surgery.export(model, tok, HEADS, kind, eps, None, tmp_path / "out")
    # the caller's model is unchanged
    assert torch.equal(forward(model, ids, mask, pos).logits, base)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    real = mask.bool()
    torch.testing.assert_close(forward(reloaded, ids, mask, pos).logits[real], hooked[real], **TOL)

    files = set(summary["files"])
    assert {"config.json", "model.safetensors", "README.md", "shb_ablation.json"} <= files
    if tok is not None:
        assert "tokenizer.json" in files
    card = (tmp_path / "out" / "README.md").read_text()
    for h in ("0-1", "1-3", "1-0"):
        assert h in card
    assert f"{summary['parameters_modified']:,}" in card
    meta = json.loads((tmp_path / "out" / "shb_ablation.json").read_text())
    assert meta["parameters_modified"] == A.parameters_modified(model, HEADS, kind)[0]
    assert meta["heads"] == ["0-1", "1-0", "1-3"]


def test_export_refuses_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        surgery.export(tiny_model("llama"), None, HEADS, "zero", 0.0, None, tmp_path)
