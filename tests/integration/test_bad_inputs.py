"""Bad input never becomes data and never a traceback: the table in tests/cases/bad_inputs.json.

Every case runs `shb ...` in process (click's CliRunner) against one shared toy database; most fail
before any model loads. Each asserts the exit code, a fragment of the message, that no traceback was
printed (and no exception escaped the CLI), and every table's row count before and after.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from shb.cli import main

TABLE = json.loads((Path(__file__).resolve().parent.parent / "cases" / "bad_inputs.json").read_text())
CASES = TABLE["cases"]


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    """One small real run on the (cached) toy model: ships on 4 prompts, layer 0."""
    from shb.run import run_suite
    from shb.suite import from_dict

    db = tmp_path_factory.mktemp("bad-inputs") / "shared.duckdb"
    run_suite(from_dict(TABLE["base_suite"]), db, log=lambda *a: None)
    return db


def row_counts(db: Path) -> dict[str, int]:
    from shb.store import Store

    with Store(db, read_only=True) as store:
        tables = [r[0] for r in store.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
        union = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM \"{t}\"" for t in tables)
        return dict(store.con.execute(union).fetchall())


def _fill(value, places: dict):
    if isinstance(value, str):
        if value == "$inf":
            return math.inf
        if value == "$nan":
            return math.nan
        for key, replacement in places.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    return value


def _patched(base: dict, patch: dict, places: dict) -> dict:
    suite = copy.deepcopy(base)
    for pointer, value in patch.items():
        *parents, last = pointer.strip("/").split("/")
        node = suite
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        value = _fill(value, places)
        if isinstance(node, list):
            index = int(last)
            if index == len(node):
                node.append(value)
            else:
                node[index] = value
        else:
            node[last] = value
    # One database holds one content per label (shb.identity): a case that changes a model's or a
    # dataset's content gets a label of its own, so it reaches the check it is about.
    for section in ("models", "datasets"):
        entries, originals = suite.get(section), base.get(section) or []
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            relabel = (isinstance(entry, dict) and i < len(originals) and entry != originals[i]
                       and entry.get("id") == originals[i].get("id") and f"/{section}/{i}/id" not in patch)
            if relabel:
                entry["id"] = f"{entry['id']}-changed"
    return suite


def _foreign_db(path: Path) -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE ships (name VARCHAR, tonnage INTEGER)")
    con.execute("INSERT INTO ships VALUES ('Endurance', 348)")
    con.close()
    return path


def _foreign_tables(path: Path):
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall(), \
            con.execute("SELECT count(*) FROM ships").fetchall()
    finally:
        con.close()


def test_the_table_is_big_enough():
    assert len(CASES) >= 50
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, shared_db, tmp_path):
    if case.get("skip_if") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    places = {"tmp": str(tmp_path), "db": str(shared_db), "file": str(tmp_path / "plain.txt"),
              "suite": str(tmp_path / "suite.json"), "foreign": str(tmp_path / "foreign.duckdb"),
              "emptydb": str(tmp_path / "empty.duckdb")}
    if "{emptydb}" in json.dumps(case):
        import duckdb

        duckdb.connect(places["emptydb"]).close()  # a DuckDB file with no tables at all
    for name, target in (case.get("links") or {}).items():
        os.symlink(_fill(target, places), tmp_path / name)
    for name in case.get("fifos") or []:
        os.mkfifo(tmp_path / name)
    (tmp_path / "plain.txt").write_text("a plain file\n")
    foreign = "{foreign}" in json.dumps(case)
    if foreign:
        foreign_before = _foreign_tables(_foreign_db(tmp_path / "foreign.duckdb"))
    for name, content in (case.get("files") or {}).items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            target.write_bytes(bytes.fromhex(content["hex"]))
        else:
            target.write_text(_fill(content, places))
    suite_file = tmp_path / "suite.json"
    if "suite_text" in case:
        suite_file.write_text(case["suite_text"])
    elif "suite_hex" in case:
        suite_file.write_bytes(bytes.fromhex(case["suite_hex"]))
    else:
        suite_file.write_text(json.dumps(_patched(TABLE["base_suite"], case.get("patch") or {}, places)))

    before = row_counts(shared_db)
    env = {k: _fill(v, places) for k, v in (case.get("env") or {}).items()}
    result = CliRunner().invoke(main, _fill(case["args"], places), env=env)
    output = result.output

    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"an exception escaped the CLI: {result.exception!r}\n{output}")
    assert "Traceback" not in output, output
    assert result.exit_code == case["exit"], output
    assert _fill(case["message"], places) in output, output
    assert "error:" in output.lower(), output  # shb's "error: ..." or click's "Error: ..." for a bad flag

    expected = dict(before)
    for table, delta in (case.get("rows") or {}).items():
        expected[table] = expected.get(table, 0) + delta
    assert row_counts(shared_db) == expected
    if foreign:
        assert _foreign_tables(tmp_path / "foreign.duckdb") == foreign_before  # not touched, no tables added
    for path in case.get("absent") or []:
        assert not Path(_fill(path, places)).exists(), path
    if "after_file" in case:  # a file the command must have left as it was
        path, text = case["after_file"]
        assert Path(_fill(path, places)).read_text() == text
    if "after_sql" in case:
        from shb.store import Store

        query, rows = case["after_sql"]
        with Store(shared_db, read_only=True) as store:
            assert [list(r) for r in store.con.execute(query).fetchall()] == rows


def test_too_long_prompts_are_truncated_where_the_suite_says_so(tmp_path):
    """The counterpart of the "prompt longer than the context" case: with "too_long": "truncate" the run
    goes on, the cut is recorded per prompt, and the prompts table keeps the original text."""
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import from_dict

    data = tmp_path / "d.txt"
    long_text = "how to make a bomb " * 300
    data.write_text(f"steal money from a bank\n{long_text}\n")
    suite = copy.deepcopy(TABLE["base_suite"])
    suite["datasets"] = [{"id": "h", "kind": "txt", "path": str(data), "format": "chat", "too_long": "truncate"}]
    db = tmp_path / "r.duckdb"
    counts = run_suite(from_dict(suite), db, log=lambda *a: None)
    assert counts["failed"] == 0
    with Store(db, read_only=True) as store:
        (cut,) = store.con.execute("SELECT prompt_id, n_tokens, kept_tokens FROM truncations").fetchall()
        assert cut[0] == 1 and cut[1] > 512 >= cut[2] > 400
        assert store.con.execute("SELECT text FROM prompts WHERE prompt_id = 1").fetchall() == [(long_text.strip(),)]
        assert store.con.execute("SELECT count(DISTINCT prompt_id) FROM ships").fetchall() == [(2,)]
