"""The utility metric measured for real: benign loss and lm-eval accuracy against computations that
share no code with shb's (Hugging Face's own loss; log-likelihoods from plain forwards), the
ablation active inside lm-eval, and `shb run` -> `shb report utility` on a small toy suite."""

import json

import pytest
import torch

from shb.interventions import HeadAblation, NoIntervention
from tests.conftest import make_tokenizer, tiny_llama

TEXTS = ["how to bake bread", "write poem about cake please", "tell me the history of rome and plan trip to paris",
         "learn python code sort list", "sure here is", "garden grow tomato first then water"]


class Tiny:
    """The two attributes shb's loss and ablation code read from a loaded model."""

    def __init__(self):
        self.tokenizer = make_tokenizer()
        self.model = tiny_llama(layers=2, heads=4, kv_heads=2, vocab=len(self.tokenizer))


def hf_loss(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_benign_loss_equals_transformers_loss_one_text_at_a_time():
    from shb.utility.loss import text_losses

    lm = Tiny()
    assert len({len(lm.tokenizer(t)["input_ids"]) for t in TEXTS}) > 2      # batches really are padded
    got = text_losses(lm, TEXTS, batch_size=4)
    for t, text in zip(got, TEXTS):
        assert t.n_predicted == len(lm.tokenizer(text)["input_ids"]) - 1
        assert t.mean_nll == pytest.approx(hf_loss(lm.model, lm.tokenizer, text), abs=1e-5)
    # under an intervention: the same, with shb's hooks attached by hand around the reference
    ablation = HeadAblation(((0, 1), (1, 3)), "undifferentiated", 0.0)
    with ablation.applied(lm):
        ablated = text_losses(lm, TEXTS, batch_size=3)
        reference = [hf_loss(lm.model, lm.tokenizer, text) for text in TEXTS]
    assert [t.mean_nll for t in ablated] == pytest.approx(reference, abs=1e-5)
    assert max(abs(a.mean_nll - b.mean_nll) for a, b in zip(ablated, got)) > 1e-3


# -- lm-eval ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    from shb import models

    return models.load("toy", dtype="float32", device="cpu")


def by_hand(lm, docs, heads):
    """Per-document accuracy and log-likelihoods, one unpadded sequence at a time, shb's hooks attached
    by hand. Split as lm-eval documents it: trailing whitespace of the context goes to the continuation,
    the pair is encoded whole and the continuation is what follows the context's tokens."""
    from shb.ablation import ablate

    accs, logliks = [], []
    with ablate(lm, heads, kind="undifferentiated", epsilon=0.0):
        for doc in docs:
            context = lm.tokenizer.apply_chat_template([{"role": "user", "content": doc["prompt"]}], tokenize=False,
                                                       add_generation_prompt=True)
            scores = []
            for choice in doc["choices"]:
                whole = lm.tokenizer(context + choice, add_special_tokens=False)["input_ids"]
                n_ctx = len(lm.tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"])
                with torch.no_grad():
                    logp = torch.log_softmax(lm.model(torch.tensor([whole])).logits[0].float(), -1)
                scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole))))
            logliks.append(scores)
            accs.append(float(max(range(len(scores)), key=scores.__getitem__) == doc["label"]))
    return accs, logliks


def test_ablation_is_active_inside_lm_eval(toy, tmp_path):
    pytest.importorskip("lm_eval")
    from shb.utility import lmeval, toytasks

    names, include, registry = lmeval.resolve_tasks(["shb_toy_topic"], docs=24, cache=tmp_path)
    manager = lmeval.task_manager(include, registry)
    wrapper = lmeval.hflm(toy, batch_size=16)
    docs = toytasks.topic_docs(24)
    destructive = tuple((layer, head) for layer in range(toy.n_layers) for head in range(toy.n_heads))
    ablation = HeadAblation(destructive, "undifferentiated", 0.0)
    hooked = toy.model.model.layers[0].self_attn.q_proj         # a module the ablation hooks (toy = Llama)
    seen = [0]
    handle = hooked.register_forward_hook(lambda *a: seen.__setitem__(0, seen[0] + 1))
    try:
        ablated = lmeval.run_task(toy, wrapper, manager, "shb_toy_topic", names[0], ablation, apply_chat_template=True)
    finally:
        handle.remove()
    plain = lmeval.run_task(toy, wrapper, manager, "shb_toy_topic", names[0], NoIntervention(), apply_chat_template=True)

    def per_doc(run):
        rows = sorted((d.doc_id, d.value, d.detail["resps"]) for d in run.docs if d.measure == "acc")
        return [r[1] for r in rows], [[float(x[0]) for x in r[2]] for r in rows]

    acc_ablated, ll_ablated = per_doc(ablated)
    acc_plain, ll_plain = per_doc(plain)
    assert len(acc_ablated) == len(acc_plain) == 24
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"\ntoy topic task: accuracy {mean(acc_plain):.3f} unablated, {mean(acc_ablated):.3f} with all heads flattened")
    assert mean(acc_plain) - mean(acc_ablated) > 0.2            # the ablation acted inside lm-eval
    assert seen[0] == ablated.n_forwards > 0                    # every lm-eval forward went through a hooked module
    hand_acc, hand_ll = by_hand(toy, docs, list(destructive))
    assert acc_ablated == hand_acc                              # the same per-document verdicts
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(ll_ablated) == pytest.approx(flat(hand_ll), abs=2e-4)   # right padding, batching: no effect
    plain_acc, plain_ll = by_hand(toy, docs, [])
    assert acc_plain == plain_acc and flat(ll_plain) == pytest.approx(flat(plain_ll), abs=2e-4)
    assert toy.tokenizer.padding_side == "left"                 # lm-eval left shb's tokenizer as it was


# -- shb run -> shb report utility ----------------------------------------------------------------------

def test_run_and_report(tmp_path):
    from click.testing import CliRunner

    from shb.reports.cli import report
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import from_dict
    from shb.utility import lmeval
    from tests.conftest import REPO

    metric = {"id": "utility", "kind": "utility", "heads": ["2-6", "1-0"], "datasets": ["harm"],
              "over_refusal": {"dataset": "benign", "max_new_tokens": 16},
              "benign_loss": {"dataset": "chats"}}
    with_lm_eval = lmeval.available()
    if with_lm_eval:
        metric["lm_eval"] = {"tasks": ["shb_toy_topic"], "apply_chat_template": True, "docs": 16}
    suite = from_dict({
        "name": "utility-test", "models": [{"id": "toy", "kind": "toy"}],
        "datasets": [{"id": "harm", "kind": "toy-harmful", "limit": 4, "format": "chat"},
                     {"id": "benign", "kind": "toy-benign", "limit": 12, "format": "chat"},
                     {"id": "chats", "kind": "jsonl", "path": str(REPO / "suites/data/toy-benign-chats.jsonl"),
                      "column": "text", "limit": 12}],
        "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 0.0}],
        "metrics": [metric], "defaults": {"device": "cpu", "seed": 0}})
    db = tmp_path / "r.duckdb"
    counts = run_suite(suite, db, log=lambda *a: None)
    assert counts == {"done": 1, "skipped": 0, "failed": 0}
    result = CliRunner().invoke(report, ["utility", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    parts = {(r["part"], r["k"]) for r in rows}
    assert parts >= {("over_refusal", 0), ("over_refusal", 2), ("benign_loss", 0), ("benign_loss", 2)}
    assert (("lm_eval", 0) in parts) == with_lm_eval
    for r in rows:
        assert r["lo"] <= r["value"] <= r["hi"] and r["n"] > 0
        assert r["unablated"] is not None and r["change"] == pytest.approx(r["value"] - r["unablated"])
        assert (r["se"] is None) == (r["measure"] != "nll")
    assert next(r for r in rows if r["part"] == "benign_loss" and r["k"] == 2)["heads"] == "2-6,1-0"
    # the stored benign loss of the unmodified model, recomputed by Hugging Face's loss directly
    from shb import models

    lm = models.load("toy", dtype="float32", device="cpu")
    with Store(db, read_only=True) as store:
        stored = store.con.execute("""SELECT d.value, p.text FROM utility_docs d JOIN prompts p
            ON p.dataset_id = d.task AND p.prompt_id = d.doc_id
            WHERE d.part = 'benign_loss' AND d.k = 0 ORDER BY d.doc_id""").fetchall()
        if with_lm_eval:
            version, hashes = store.con.execute("""SELECT any_value(lm_eval_version), count(DISTINCT task_hash)
                FROM utility_docs WHERE part = 'lm_eval'""").fetchone()
            assert version == lmeval.version() and hashes == 1   # ablated and unablated: the same documents
    assert len(stored) == 12
    for value, text in stored:
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            assert value == pytest.approx(float(lm.model(input_ids=ids, labels=ids).loss), abs=1e-5)
