"""Progress display for ``shb run``: one overall bar, one live line, one summary line per finished unit.

``RunProgress`` takes the calls of rich.progress.Progress that the runner and the metrics make
(``add_task``, ``update``, ``advance``, ``remove_task``), so none of them needs to know how it is
drawn. The first task added is the overall bar (units); every later task is a step of the current
unit, and only the most recently active step is drawn, on one line with its rate and ETA. When the
overall bar advances, the unit is over: its steps are hidden and one line (done or failed, time)
is printed above the live area, which never grows past two lines. Other code (the toy model build)
reaches the live display through ``active()`` to show its own steps and notes there.

``make_progress(False)`` and ``NullProgress`` do nothing, for --quiet and for library callers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

_ACTIVE = None


def active():
    """The RunProgress being shown now, or None."""
    return _ACTIVE


def make_progress(enabled: bool = True, console=None):
    if not enabled:
        return NullProgress()
    return RunProgress(console)


def clock(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03; '-:--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "-:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def rate_text(per_second: float | None) -> str:
    if not per_second:
        return ""
    return f"{per_second:.3g}/s" if per_second >= 1 else f"{1 / per_second:.3g}s/it"


class _Step:
    def __init__(self, description: str, total, completed: int = 0):
        self.description, self.total, self.completed = description, total, completed
        self.started = None           # first advance: rates ignore time spent before work began
        self.at_start = completed
        self.visible = True

    def rate(self, now: float) -> float | None:
        if self.started is None or now <= self.started or self.completed <= self.at_start:
            return None
        return (self.completed - self.at_start) / (now - self.started)

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.completed) / rate)


def bar(done: float, total, width: int) -> str:
    if not total:
        return " " * width
    filled = min(width, int(width * done / total))
    return "━" * filled + "╺" + "─" * max(0, width - filled - 1) if filled < width else "━" * width


class RunProgress:
    """The display of one run (see the module docstring)."""

    SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, console=None):
        from shb.reports.render import make_console

        self.console = console or make_console(stderr=True)
        self._steps: dict[int, _Step] = {}
        self._overall: int | None = None
        self._current: int | None = None
        self._next_id = 0
        self._unit_label = None
        self._unit_started = None
        self._started = time.perf_counter()
        self._live = None

    # -- the context: start and stop the live area ----------------------------------------------
    def __enter__(self):
        global _ACTIVE
        from rich.live import Live

        self._live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4,
                          transient=True, redirect_stdout=True, redirect_stderr=True)
        self._live.__enter__()
        _ACTIVE = self
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        _ACTIVE = None
        if self._live is not None:
            self._live.__exit__(*exc)
        return False

    # -- rich.progress.Progress's calls -------------------------------------------------------------
    def add_task(self, description: str, total=None, completed: int = 0, **_fields) -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        self._steps[task_id] = _Step(description, total, completed)
        if self._overall is None:
            self._overall = task_id
            self._steps[task_id].started = time.perf_counter()
        else:
            self._current = task_id
        return task_id

    def update(self, task_id: int, *, description=None, total=None, completed=None, advance=None,
               outcome=None, visible=None, **_fields) -> None:
        step = self._steps.get(task_id)
        if step is None:
            return
        if description is not None:
            step.description = description
            if task_id == self._overall:
                self._unit_label = description
                self._unit_started = time.perf_counter()
        if total is not None:
            step.total = total
        if completed is not None:
            step.completed = completed
        if advance:
            self.advance(task_id, advance, outcome=outcome)

    def advance(self, task_id: int, advance: float = 1, outcome: str | None = None) -> None:
        step = self._steps.get(task_id)
        if step is None:
            return
        now = time.perf_counter()
        if step.started is None:
            step.started = now
        step.completed += advance
        if task_id == self._overall:
            self._unit_finished(outcome or "done", now)
        else:
            step.visible = True
            self._current = task_id

    def remove_task(self, task_id: int) -> None:
        if task_id != self._overall:
            self._steps.pop(task_id, None)
            if self._current == task_id:
                self._current = None

    def start_task(self, *args, **kwargs) -> None:
        pass

    # -- notes from elsewhere (the toy build) ---------------------------------------------------
    def note(self, text: str, style: str = "") -> None:
        """A line printed above the live area (it stays on screen)."""
        self.console.print(text, style=style, highlight=False, soft_wrap=False, overflow="fold")

    def steps(self, description: str, total):
        """A callback ``on_step(step, loss)`` that shows a training loop on the live line."""
        task_id = self.add_task(description, total=total)

        def on_step(step, loss=None):
            self.update(task_id, completed=step + 1)
            s = self._steps.get(task_id)
            if s is not None and s.started is None:
                s.started, s.at_start = time.perf_counter(), step + 1
            if loss is not None and s is not None:
                s.description = f"{description.strip()} (loss {loss:.3f})"
        return on_step

    # -- drawing ----------------------------------------------------------------------------------
    def _unit_finished(self, outcome: str, now: float) -> None:
        label = (self._unit_label or "unit").removeprefix("unit ")
        took = now - (self._unit_started or now)
        mark, style = ("✓", "green") if outcome == "done" else ("✗", "bold red")
        self.note(f"{mark} {label}  {outcome}  {clock(took)}", style=style)
        for task_id, step in self._steps.items():
            if task_id != self._overall:
                step.visible = False
        self._current = None

    def _render(self):
        from rich.text import Text

        now = time.perf_counter()
        width = max(40, self.console.width)
        lines = []
        if self._overall is not None:
            o = self._steps[self._overall]
            units_eta = None
            if o.completed and o.total:
                units_eta = (now - self._started) / o.completed * (o.total - o.completed)
            tail = f" {o.completed:g}/{o.total or '?'}  {clock(now - self._started)}  eta {clock(units_eta)}"
            lines.append(Text("units ") + Text(bar(o.completed, o.total, max(10, min(30, width - 6 - len(tail)))),
                                                style="magenta") + Text(tail))
            label = (self._unit_label or "").removeprefix("unit ")
        else:
            label = ""
        step = self._steps.get(self._current) if self._current is not None else None
        spin = self.SPINNER[int(now * 8) % len(self.SPINNER)]
        if step is not None and step.visible:
            count = f"{step.completed:g}/{step.total:g}" if step.total else f"{step.completed:g}"
            numbers = "  ".join(x for x in (count, rate_text(step.rate(now)),
                                            f"eta {clock(step.eta(now))}" if step.total else "") if x)
            what = f"{label}: {step.description.strip()}" if label else step.description.strip()
        elif label:
            numbers, what = "", label
        else:
            return Text("\n".join(str(x) for x in lines)) if lines else Text("")
        room = width - 2 - len(numbers) - 2
        if len(what) > room:
            what = what[:max(1, room - 1)] + "…"
        lines.append(Text(f"{spin} {what}", style="cyan") + Text(" " * max(2, room - len(what) + 2) + numbers))
        out = Text()
        for i, line in enumerate(lines):
            out.append_text(line)
            if i < len(lines) - 1:
                out.append("\n")
        return out


class NullProgress:
    """Same calls as RunProgress / rich.progress.Progress, doing nothing."""

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
    """A step that disappears when its work is done (for inner loops: prompts, heads, tokens)."""
    if progress is None:
        progress = NullProgress()
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda n=1: progress.advance(task_id, n)
    finally:
        progress.remove_task(task_id)
