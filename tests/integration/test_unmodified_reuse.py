"""The unmodified model's answers are computed once per run and handed to every unit that asks for the
same prompt chunk (UnitContext.unmodified_answers): the reused answers equal what each unit computes
on its own (the plain path, REUSE_UNMODIFIED_ANSWERS off), and the reuse really skips the work."""

import pytest

import shb.generate
import shb.metrics.asr
import shb.metrics.base
import shb.metrics.utility

TOY_SUITE = {
    "name": "reuse-test", "models": [{"id": "toy", "kind": "toy"}],
    "datasets": [{"id": "harm", "kind": "toy-harmful", "limit": 6, "format": "chat"},
                 {"id": "benign", "kind": "toy-benign", "limit": 6, "format": "chat"},
                 {"id": "other", "kind": "toy-harmful", "limit": 6, "format": "direct"}],
    "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 0.0},
                  {"id": "sc", "kind": "scaling", "epsilon": 0.0}],
    "metrics": [
        # k = 0 on "harm" under both ablations and in two metrics: one computation
        {"id": "a1", "kind": "asr", "heads": ["2-6"], "k": [0, 1], "max_new_tokens": 8, "datasets": ["harm"]},
        {"id": "a2", "kind": "asr", "heads": ["1-0", "2-6"], "k": [0, 2], "max_new_tokens": 8,
         "datasets": ["harm", "other"]},
        # another max_new_tokens: not the same answers
        {"id": "a3", "kind": "asr", "heads": ["2-6"], "k": [0, 1], "max_new_tokens": 6, "datasets": ["harm"]},
        # two utility units: k = 0 answers on "benign" once
        {"id": "u1", "kind": "utility", "heads": ["2-6"], "datasets": ["harm"],
         "over_refusal": {"dataset": "benign", "max_new_tokens": 8}},
        {"id": "u2", "kind": "utility", "heads": ["1-0"], "datasets": ["harm"],
         "over_refusal": {"dataset": "benign", "max_new_tokens": 8}},
    ],
    "defaults": {"device": "cpu", "seed": 0, "batch_size": 4}}


def _run(tmp_path, name, reuse, monkeypatch):
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import from_dict

    calls = []
    real = shb.generate.generate

    def counting(lm, prompts, **kw):
        calls.append(len(prompts))
        return real(lm, prompts, **kw)

    monkeypatch.setattr(shb.metrics.base, "REUSE_UNMODIFIED_ANSWERS", reuse)
    monkeypatch.setattr(shb.metrics.asr, "generate", counting)
    monkeypatch.setattr(shb.metrics.utility, "generate", counting)
    db = tmp_path / f"{name}.duckdb"
    counts = run_suite(from_dict(TOY_SUITE), db, log=lambda *a, **k: None)
    assert counts["failed"] == 0, counts
    with Store(db, read_only=True) as store:
        gens = store.query("""SELECT u.metric_id, g.dataset_id, g.ablation_id, g.k, g.prompt_id, g.text
            FROM generations g JOIN units u USING (unit_id) ORDER BY ALL""").rows()
        benign = store.query("""SELECT metric_id, ablation_id, k, doc_id, value, CAST(detail AS VARCHAR)
            FROM utility_docs WHERE part = 'over_refusal' ORDER BY ALL""").rows()
    return gens, benign, calls


@pytest.mark.slow
def test_reused_unmodified_answers_equal_each_units_own(tmp_path, monkeypatch):
    fast, fast_benign, fast_calls = _run(tmp_path, "reuse", True, monkeypatch)
    plain, plain_benign, plain_calls = _run(tmp_path, "plain", False, monkeypatch)
    assert fast == plain and fast_benign == plain_benign
    k0 = [g for g in fast if g[3] == 0]
    # every unit still wrote its own k = 0 rows: a1, a2 (x2 datasets), a3, each under ua and sc
    assert {(g[0], g[1], g[2]) for g in k0} == {(m, d, a) for m, d in [("a1", "harm"), ("a2", "harm"),
                                                                          ("a2", "other"), ("a3", "harm")]
                                               for a in ("ua", "sc")}
    assert {(b[0], b[1], b[2]) for b in fast_benign if b[2] == 0} == {(u, a, 0) for u in ("u1", "u2")
                                                                       for a in ("ua", "sc")}
    # the k = 0 answers of one prompt chunk are computed once: harm at 8 tokens (a1, a2, each under ua
    # and sc: 3 reused), harm at 6 tokens (a3: 1), other (a2: 1), benign (u1, u2 under ua and sc: 3);
    # the plain path computes each unit's own, and every ablated chunk either way
    assert len(plain_calls) - len(fast_calls) == 3 + 1 + 1 + 3
