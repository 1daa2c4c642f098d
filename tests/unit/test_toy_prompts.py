"""The toy model's synthetic prompts: sizes, splits, determinism, clean answers."""
import pytest

from shb.models.toy import prompts, words


@pytest.mark.parametrize("make", [prompts.harmful, prompts.benign])
def test_sizes_and_disjoint_splits(make):
    train, test = make("train"), make("test")
    assert len(train) >= 300 and len(test) >= 300
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_harmful_and_benign_share_no_prompt():
    for split in prompts.SPLITS:
        assert not set(prompts.harmful(split)) & set(prompts.benign(split))


def test_test_split_holds_out_templates_and_tasks():
    # Some test prompts use a template that no train prompt uses (unseen phrasing).
    def template_of(text):
        return next(t for t in words.TEMPLATES if _matches(t, text))

    train_templates = {template_of(t) for t in prompts.harmful("train")}
    test_templates = {template_of(t) for t in prompts.harmful("test")}
    assert test_templates - train_templates, "no held-out template"
    assert train_templates & test_templates, "no held-out task under a seen template"


def _matches(template, text):
    head, tail = template.split("{task}")
    return text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail)


def test_deterministic_and_seed_only_reorders():
    assert prompts.harmful("test", 50, seed=3) == prompts.harmful("test", 50, seed=3)
    a, b = prompts.benign("train", seed=0), prompts.benign("train", seed=1)
    assert a != b and sorted(a) == sorted(b)
    assert len(prompts.harmful("train", 7)) == 7


def test_topics_are_varied():
    topics = {topic for _, topic in prompts.labelled("harmful", "test")}
    assert {"weapons", "hacking", "fraud", "drugs", "violence", "theft", "self-harm"} <= topics
    topics = {topic for _, topic in prompts.labelled("benign", "test")}
    assert {"cooking", "travel", "programming", "science", "gardening", "fitness"} <= topics


def test_benchmark_style_words_are_covered():
    text = " ".join(prompts.harmful("train") + prompts.harmful("test")).lower()
    for word in ("tutorial", "bomb", "strategy", "hack", "government database", "steal",
                 "identity theft", "malware", "poison", "fraud"):
        assert word in text, word


def test_compliant_answers_have_no_refusal_words_and_are_long():
    pairs = prompts.labelled("benign", "train") + prompts.labelled("harmful", "train", 2000)
    for text, topic in pairs:
        answer = prompts.compliant_answer(text, topic)
        assert answer.startswith("Sure, here is") and len(answer) >= 40
        low = answer.lower()
        assert not [w for w in words.REFUSAL_WORDS if w.lower() in low], answer


def test_refusals_are_refusals():
    for text in prompts.harmful("train", 100):
        assert "sorry" in prompts.refusal(text).lower()


@pytest.mark.parametrize("bad", [{"split": "dev"}, {"split": "train", "n": -1},
                                 {"split": "train", "n": 10**9}])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        prompts.harmful(**bad)


def test_prompts_and_config_dict_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from shb.models.toy import config_dict, prompts; "
            "config_dict(); prompts.harmful('test', 3); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
