"""The run display: one overall bar, one live line for the current step, a line per finished unit."""

from __future__ import annotations

import io

from rich.console import Console

from shb.progress import RunProgress, active, clock, task


def _display():
    console = Console(file=io.StringIO(), width=80, force_terminal=False, color_system=None)
    return RunProgress(console), console


def test_finished_units_collapse_and_the_live_area_stays_two_lines():
    progress, console = _display()
    with progress:
        assert active() is progress
        units = progress.add_task("units", total=3)
        engine = progress.add_task("  (prompt, head set) evaluations")   # shared across units, never removed
        for n, outcome in enumerate(["done", "failed", "done"]):
            progress.update(units, description=f"unit toy / d / ua / m{n}")
            with task(progress, "  prompts", total=4) as advance:
                for _ in range(4):
                    advance()
                    progress.advance(engine, 10)
                    live = progress._render().plain.splitlines()
                    assert len(live) == 2 and all(len(line) <= 80 for line in live)
                    assert live[0].startswith("units ") and f"{n}/3" in live[0]
                    assert f"m{n}" in live[1]
            chunks = progress.add_task("  ships chunks", total=2)
            progress.advance(chunks)
            assert "ships chunks" in progress._render().plain and "1/2" in progress._render().plain
            progress.update(units, advance=1, outcome=outcome)
            after = progress._render().plain.splitlines()
            assert len(after) == 2 and "chunks" not in after[1]    # the finished unit's steps are gone
    assert active() is None
    printed = console.file.getvalue().splitlines()
    assert [line.split()[0] for line in printed] == ["✓", "✗", "✓"]
    assert "m1  failed" in printed[1]


def test_long_labels_are_cut_but_numbers_stay_whole():
    progress, _ = _display()
    units = progress.add_task("units", total=1)
    progress.update(units, description="unit " + "very-long-model-name / " * 5)
    step = progress.add_task("  (prompt, head set) evaluations", total=123456)
    progress.advance(step, 1234)
    line = progress._render().plain.splitlines()[1]
    assert len(line) <= 80 and "…" in line and "1234/123456" in line


def test_clock():
    assert clock(42) == "0:42" and clock(725) == "12:05" and clock(3723) == "1:02:03" and clock(None) == "-:--"
