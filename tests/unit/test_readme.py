"""The README is the front door: what it lists (suites, commands, version floors) is what the code has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _code_blocks(text: str) -> str:
    """The lines of the README's shell code blocks (```bash, or ``` with no language)."""
    lines, inside, keep = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            inside, keep = not inside, line.strip() in ("```bash", "```sh", "```")
            continue
        if inside and keep:
            lines.append(line)
    return "\n".join(lines)


def test_every_shipped_suite_is_in_the_readme_and_every_named_suite_exists():
    shipped = {p.name for p in (REPO / "suites").glob("*.json")}
    named = set(re.findall(r"suites/([A-Za-z0-9_.-]+\.json)", README))
    assert shipped - named == set(), f"suites the README does not mention: {sorted(shipped - named)}"
    assert named - shipped == set(), f"suites the README names that do not exist: {sorted(named - shipped)}"


def test_the_readme_commands_are_the_cli_commands():
    from shb.cli import main
    from shb.reports.cli import report

    blocks = _code_blocks(README)
    used = set(re.findall(r"^\s*(?:.*&& )?shb ([a-z]+)", blocks, flags=re.M))
    assert used <= set(main.commands), f"README commands shb does not have: {sorted(used - set(main.commands))}"
    missing = set(main.commands) - set(re.findall(r"\bshb ([a-z]+)", README))
    assert not missing, f"commands the README never mentions: {sorted(missing)}"
    reports = set(re.findall(r"shb report ([a-z]+(?: \| [a-z]+)*)", README))
    listed = {name for group in reports for name in group.split(" | ")}
    assert listed - set(report.commands) == set(), sorted(listed - set(report.commands))
    assert set(report.commands) - listed == set(), f"reports the README never names: {sorted(set(report.commands) - listed)}"


def test_the_readme_version_floors_are_the_ones_pip_enforces():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python_floor = re.search(r">=\s*([0-9.]+)", project["requires-python"]).group(1)
    torch_floor = next(re.search(r">=\s*([0-9.]+)", d).group(1) for d in project["dependencies"] if d.startswith("torch"))
    assert f"Python ≥ {python_floor}" in README
    assert f"torch ≥ {torch_floor}" in README
    assert not re.search(r"torch ≥ (?!%s)" % re.escape(torch_floor), README)
