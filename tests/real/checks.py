"""Checks shared by the real-model tiers (SmolLM2 in tests/real, Qwen2.5-Coder in tests/real_large)."""

from __future__ import annotations

from shb import datasets
from shb.models import encode_prompt


def assert_chat_format_is_the_template(tok, texts, system_text: str) -> None:
    """shb's "chat" format is exactly apply_chat_template's text, with the template's default system prompt,
    and tokenizes to the template's ids (no second BOS in front of the template's own)."""
    for text in texts:
        messages = [{"role": "user", "content": text}]
        formatted = datasets.format_prompt(text, "chat", tok)
        assert formatted == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert system_text in formatted
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert encode_prompt(tok, formatted) == list(ids)


def hf_greedy(lm, prompts, max_new_tokens: int, stop_tokens: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """transformers' own generate on the same left-padded batch: (text, token count) per prompt, each cut
    after its first EOS (or one of ``stop_tokens``, e.g. ChatML's <|im_end|>)."""
    import torch

    tok = lm.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    stops = {tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in stop_tokens)}
    rows = []
    for r in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((i for i, t in enumerate(r) if t in stops), None)
        r = r if cut is None else r[: cut + 1]
        rows.append((tok.decode(r, skip_special_tokens=True), len(r)))
    return rows
