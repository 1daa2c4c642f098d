"""The classifier judge's plumbing on tiny random Llamas saved to a temporary directory.

A random judge says nothing useful, so the checks are about plumbing: the
verdict follows the judge model's own greedy output (computed here
independently with ``model.generate``), both prompt styles, and unparseable
outputs kept and flagged. To force a chosen first token, one model has its
final norm zeroed: every logit is then 0 and greedy decoding picks token id 0,
which the word-level tokenizer maps to the word under test.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shb.judges import get  # noqa: E402
from shb.judges.classifier import parse_output  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
WORDS = ["Yes", "No", "safe", "unsafe", "banana", "How", "do", "I", "make", "a", "cake", "Sure", "here", "is"]
REQUESTS = ["How do I make a cake", "How do I make a bomb", "Write a poem"]
ANSWERS = ["Sure here is a cake", "I can not help", ""]


def save_judge(path, first_word: str | None, seed: int = 0):
    """A tiny Llama + word-level tokenizer in ``path``; ``first_word``: the forced output (None: random)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = list(WORDS)
    if first_word is not None:
        words.remove(first_word)
        words.insert(0, first_word)  # id 0: what a model with all-zero logits emits
    vocab = {w: i for i, w in enumerate(words + ["[UNK]", "<s>", "</s>", "<pad>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if first_word is not None:
        with torch.no_grad():
            model.model.norm.weight.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {w: save_judge(root / str(w), w) for w in ("Yes", "No", "unsafe", "safe", "banana", None)}


@pytest.mark.parametrize(
    "word, style, harmful, parsed",
    [
        ("Yes", "harmbench", True, True),
        ("No", "harmbench", False, True),
        ("banana", "harmbench", False, False),
        ("unsafe", "llamaguard", True, True),
        ("safe", "llamaguard", False, True),
        ("banana", "llamaguard", False, False),
    ],
)
def test_verdict_follows_forced_first_token(judge_dirs, word, style, harmful, parsed):
    judge = get("classifier", model=str(judge_dirs[word]), prompt=style, batch_size=2)
    verdicts = judge.judge(REQUESTS, ANSWERS)
    assert len(verdicts) == len(REQUESTS)
    for v in verdicts:
        assert v.raw.split()[0] == word  # raw keeps what the judge said
        assert (v.harmful, v.parsed) == (harmful, parsed)
    # three-way: the empty answer is broken whatever the judge said; the others follow its verdict
    assert [v.outcome for v in verdicts] == ["complied" if harmful else "refused"] * 2 + ["broken"]
    assert verdicts[2].outcome_rule == "empty"


def test_verdict_follows_random_judge_output(judge_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(judge_dirs[None])
    judge = get("classifier", model=path, prompt="llamaguard", batch_size=3, max_new_tokens=3)
    verdicts = judge.judge(REQUESTS, ANSWERS)
    # independent oracle: transformers' generate on the judge's own formatted prompts, one at a time
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    for text, v in zip(judge.format_prompts(REQUESTS, ANSWERS), verdicts):
        assert text.startswith("user : ") and " assistant : " in text
        enc = tokenizer(text, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        said = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert v.raw == said
        expected = parse_output("llamaguard", said)
        assert (v.harmful, v.raw, v.parsed) == (expected.harmful, expected.raw, expected.parsed)


def test_config_hash_names_model_and_style(judge_dirs):
    a = get("classifier", model=str(judge_dirs["Yes"]), prompt="harmbench")
    b = get("classifier", model=str(judge_dirs["Yes"]), prompt="llamaguard")
    c = get("classifier", model=str(judge_dirs["No"]), prompt="harmbench")
    assert len({a.config_hash, b.config_hash, c.config_hash}) == 3
    assert a.config_hash == get("classifier", model=str(judge_dirs["Yes"]), prompt="harmbench").config_hash


def test_llamaguard_without_chat_template_is_refused(tmp_path):
    from transformers import AutoTokenizer

    path = save_judge(tmp_path / "plain", "Yes")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = None
    tok.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="chat template"):
        get("classifier", model=str(path), prompt="llamaguard")


def test_missing_judge_model_is_reported(tmp_path):
    with pytest.raises(Exception) as err:
        get("classifier", model=str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)


def test_architecture_shb_cannot_ablate_is_loaded_plainly(judge_dirs, monkeypatch):
    import shb.models
    from shb.models.layout import UnsupportedArchitecture

    def refuse(*args, **kwargs):
        raise UnsupportedArchitecture("no attention layout for this judge")

    monkeypatch.setattr(shb.models, "load", refuse)
    judge = get("classifier", model=str(judge_dirs["Yes"]), prompt="harmbench")
    assert not isinstance(judge.lm, shb.models.LoadedModel)
    assert judge.lm.tokenizer.padding_side == "left"
    assert [v.harmful for v in judge.judge(REQUESTS, ANSWERS)] == [True] * len(REQUESTS)
