"""A metric is one file: a throwaway kind registered the way README "Adding a metric" says (one
``Metric`` subclass plus one line in shb.registry.METRICS) validates, plans, runs, creates its table,
resumes and reports, with no change anywhere else in shb."""

from __future__ import annotations

import json

import pytest

from shb import plan, registry
from shb.errors import SuiteError
from shb.metrics.base import Metric
from shb.run import run_suite
from shb.store import Store
from shb.suite import from_dict
from tests.conftest import tiny_suite


class PromptLength(Metric):
    """Tokens of each formatted prompt, times ``scale``: the smallest metric that reads the model."""

    kind = "prompt_length"
    schema = {"properties": {"scale": {"type": "integer", "minimum": 1}}, "required": []}
    defaults = {"scale": 1}
    tables = {"prompt_lengths": "CREATE TABLE prompt_lengths (unit_id VARCHAR, prompt_id INTEGER, n_tokens INTEGER,"
                                " PRIMARY KEY (unit_id, prompt_id))"}

    def problems(self, i, metric, data, ids):
        scale = metric.get("scale")
        return [f"/metrics/{i}/scale: {scale} is more than 100"] if isinstance(scale, int) and scale > 100 else []

    def estimate(self, unit, geometry):
        return unit.n_prompts

    def chunks(self, unit, ctx):
        return ["all"]

    def run_chunk(self, unit, ctx, chunk):
        tokenizer = ctx.lm.tokenizer
        return {"prompt_lengths": [{"unit_id": unit.unit_id, "prompt_id": p.prompt_id,
                                    "n_tokens": len(tokenizer(text)["input_ids"]) * ctx.metric["scale"]}
                                   for p, text in zip(ctx.prompts, ctx.formatted)]}


def report(store):
    """The kind's report: mean tokens per unit."""
    return store.query("SELECT u.metric_id, avg(n_tokens) AS mean_tokens FROM prompt_lengths JOIN units u "
                       "USING (unit_id) GROUP BY ALL ORDER BY ALL")


@pytest.fixture()
def registered(monkeypatch):
    monkeypatch.setitem(registry.METRICS, "prompt_length",
                        (f"{__name__}:PromptLength", "tokens of each formatted prompt (a test's throwaway kind)"))


def test_a_new_metric_is_one_file(registered, tiny_model_dir, prompts_file, tmp_path):
    data = tiny_suite(tiny_model_dir, prompts_file, "plugin",
                      [{"id": "len", "kind": "prompt_length"}, {"id": "len3", "kind": "prompt_length", "scale": 3}])
    with pytest.raises(SuiteError, match="/metrics/0/scale: 500 is more than 100"):
        from_dict({**data, "metrics": [{"id": "len", "kind": "prompt_length", "scale": 500}]})
    with pytest.raises(SuiteError, match="/metrics/0/nope"):
        from_dict({**data, "metrics": [{"id": "len", "kind": "prompt_length", "nope": 1}]})
    suite = from_dict(data)
    units = plan.expand(suite)
    assert [u.spec["metric"] for u in units] == [{"kind": "prompt_length", "scale": 1},
                                                 {"kind": "prompt_length", "scale": 3}]
    db = tmp_path / "r.duckdb"
    counts = run_suite(suite, db, log=lambda *a: None)
    assert counts == {"done": 2, "skipped": 0, "failed": 0}, counts
    assert run_suite(from_dict(json.loads(json.dumps(data))), db, log=lambda *a: None)["skipped"] == 2
    with Store(db, read_only=True) as store:
        means = dict(report(store).iter_rows())
    assert means["len"] > 0 and means["len3"] == pytest.approx(3 * means["len"])
