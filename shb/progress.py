"""Progress bars (rich) with rates and ETA; a no-op stand-in when output is not wanted."""

from __future__ import annotations

from contextlib import contextmanager


def make_progress(enabled: bool = True):
    if not enabled:
        return NullProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class RateColumn(TextColumn):
        def render(self, task):
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f}/s" if speed else "  -  /s", style="progress.data.speed")

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TaskProgressColumn(), RateColumn(""), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), transient=False)


class NullProgress:
    """Same calls as rich.progress.Progress, doing nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass

    def advance(self, *args, **kwargs):
        pass

    def remove_task(self, *args, **kwargs):
        pass

    def start_task(self, *args, **kwargs):
        pass


@contextmanager
def task(progress, description: str, total: int | None):
    """A bar that disappears when its work is done (for inner loops: prompts, heads, tokens)."""
    if progress is None:
        progress = NullProgress()
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda n=1: progress.advance(task_id, n)
    finally:
        progress.remove_task(task_id)
