"""Figure layout helpers: legends beside the axes, whole-number count axes, labels that do not overlap."""

from __future__ import annotations

import pytest

from shb.reports import figures

pytest.importorskip("matplotlib")


def _axes():
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    return plt, fig, ax


def test_legend_is_outside_the_data():
    plt, fig, ax = _axes()
    ax.plot([0, 1, 2], [0, 1, 0.5], label="a long series name " * 4)
    figures.legend_outside(ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1
    plt.close(fig)


def test_count_axes_get_whole_ticks_only():
    plt, fig, ax = _axes()
    ax.plot([0, 1, 2, 3], [0, 0.1, 0.2, 0.3])
    assert figures.integer_axis(ax.xaxis, [0, 1, 2, 3])
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert not figures.integer_axis(ax.yaxis, [0, 0.1, 0.2])
    plt.close(fig)


def test_crowded_labels_do_not_overlap():
    plt, fig, ax = _axes()
    points = [(1 + 0.02 * i, 1 + 0.01 * i, f"method number {i}") for i in range(5)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xlim(0.9, 1.2)
    ax.set_ylim(0.95, 1.1)
    made = figures.place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [m.get_window_extent(renderer) for m in made]
    assert len(boxes) == 5
    assert all(figures._overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_terminal_heatmap_shows_the_long_tail_and_names_the_top_heads():
    from shb.reports import termheat

    # one large head, a tail over three decades: a linear ramp would show all but one cell blank
    grid = [[1.4 * 10 ** (-(layer * 32 + head) / 341) for head in range(32)] for layer in range(32)]
    lines = [t.plain for t in termheat.render(grid, "title", top_n=10, width=80)]
    assert max(len(line) for line in lines) <= 80
    rows = [line[6:6 + 32] for line in lines if line.startswith("  L")]
    assert len(rows) == 32
    used = set("".join(rows))
    assert len(used - {" "}) >= 8                          # most ramp levels appear
    assert rows[0][0] == "@" and rows[-1][-1] in " ."       # peak darkest, smallest lightest
    assert "1. L0 H0  1.40" in next(l for l in lines if l.startswith("  L0 "))   # named beside the grid
    assert "log scale" in lines[-1]


def test_terminal_heatmap_of_signed_scores_falls_back_to_ranks():
    from shb.reports import termheat

    lines = [t.plain for t in termheat.render([[-0.5, -0.1], [-0.3, -0.9]], "t")]
    assert "rank scale" in lines[-1] and lines[2][6:8] != lines[2][8:10], lines
