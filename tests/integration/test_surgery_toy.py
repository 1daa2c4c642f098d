"""Surgery round trip on the toy model: the exported checkpoint loads with plain transformers (no
shb code) and reproduces the hooked model's greedy generations token for token."""

import pytest
import torch

pytestmark = pytest.mark.slow


def greedy(model, tokenizer, texts, n_new=32):
    out = []
    for text in texts:  # one by one: no padding, so the comparison is about the weights alone
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            tokens = model.generate(**ids, max_new_tokens=n_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokens[0, ids["input_ids"].shape[1]:].tolist())
    return out


@pytest.mark.parametrize("kind,epsilon", [("undifferentiated", 1e-10), ("scaling", 0.0)])
def test_exported_toy_reproduces_hooked_generations(tmp_path, kind, epsilon):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shb import surgery
    from shb.ablation import ablate
    from shb.datasets import format_prompt
    from shb.models import load
    from shb.models.toy import prompts

    lm = load("toy", dtype="float32", device="cpu")
    heads = [(2, 6), (0, 3)]
    texts = [format_prompt(t, "chat", lm.tokenizer) for t in prompts.harmful("test", n=8)]
    plain_before = greedy(lm.model, lm.tokenizer, texts)
    with ablate(lm, heads, kind=kind, epsilon=epsilon):
        hooked = greedy(lm.model, lm.tokenizer, texts)
    assert hooked != plain_before  # the ablation matters on these prompts, so the comparison can fail

    summary = surgery.export(lm, None, heads, kind, epsilon, None, tmp_path / "out")
    assert summary["parameters_modified"] == 2 * lm.head_dim * lm.layout.hidden_size
    assert greedy(lm.model, lm.tokenizer, texts) == plain_before  # the caller's model is untouched

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert greedy(model, tokenizer, texts) == hooked
    assert "2-6" in (tmp_path / "out" / "README.md").read_text()
    assert not list((tmp_path / "out").glob("*.bin"))


def test_surgery_writes_with_the_users_umask(tmp_path):
    """Every file of the checkpoint (safetensors included, which its writer creates 0600) gets the mode a
    new file gets under the user's umask, as any file the user makes would."""
    import os
    import stat

    from click.testing import CliRunner

    from shb.cli import main

    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(main, ["surgery", "--model", "toy", "--heads", "2-3", "--out", str(tmp_path / "o")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}, {p.name: oct(p.stat().st_mode) for p in files}
