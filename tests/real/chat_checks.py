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
