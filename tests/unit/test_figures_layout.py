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
    assert len(made) == 5
    labels = {p[2] for p in points}
    assert [c for c in figures.overlapping_texts(fig) if labels & set(c)] == []
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
    assert "log scale" in " ".join(lines[-3:])


def test_terminal_heatmap_of_signed_scores_falls_back_to_ranks():
    from shb.reports import termheat

    lines = [t.plain for t in termheat.render([[-0.5, -0.1], [-0.3, -0.9]], "t")]
    assert "rank scale" in " ".join(lines[-3:]) and lines[2][6:8] != lines[2][8:10], lines


def test_overlapping_text_is_detected():
    """The checker the report figures are held to can fail: two labels drawn on one spot overlap."""
    plt, fig, ax = _axes()
    ax.text(0.5, 0.5, "refusal direction")
    ax.text(0.5, 0.5, "ActSVD")
    assert ("refusal direction", "ActSVD") in figures.overlapping_texts(fig)
    plt.close(fig)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure a report draws, kept open for inspection (figures._png closes them)."""
    kept = []
    original = figures._png

    def keep(fig):
        kept.append(figures.overlapping_texts(fig))
        return original(fig)

    monkeypatch.setattr(figures, "_png", keep)
    return kept


def _crowded_efficiency():
    import polars as pl

    rows = []
    methods = ["refusal direction", "ActSVD", "setdiff", "safety neurons", "safety layer"]
    for i, method in enumerate(methods):  # baselines at nearly the same share and ASR: labels would collide
        rows.append({"source": "measured", "family": f"intervention: {method}", "method": method, "k": None,
                     "model_id": "toy-a", "dataset_id": "h", "judge_id": "keyword-paper", "decoding": "greedy",
                     "share_pct": 1.0 + 0.01 * i, "asr": 0.5 + 0.005 * i, "asr_lo": 0.4, "asr_hi": 0.6, "asr_pm": None})
    for k in (1, 2, 3):
        rows.append({"source": "measured", "family": "heads: sahara:sahara (ua)", "method": f"heads k={k}", "k": k,
                     "model_id": "toy-a", "dataset_id": "h", "judge_id": "keyword-paper", "decoding": "greedy",
                     "share_pct": 0.01 * k, "asr": 0.3 * k, "asr_lo": 0.2 * k, "asr_hi": 0.3 * k + 0.05, "asr_pm": None})
    for method, share, asr in (("ActSVD (Wei et al. 2024)", 5.0, 0.73), ("GTAC&DAP (Chen et al. 2024)", 5.0, 0.64),
                               ("LSP (Zhao et al. 2024)", 3.0, 0.58)):
        rows.append({"source": "published (Table 1)", "family": "published", "method": method, "k": None,
                     "model_id": "Llama-2-7b-chat (paper)", "dataset_id": None, "judge_id": None, "decoding": None,
                     "share_pct": share, "asr": asr, "asr_lo": None, "asr_hi": None, "asr_pm": 0.03})
    return pl.DataFrame(rows)


def test_report_figures_have_no_overlapping_text(drawn):
    from shb.reports import efficiency

    frame = _crowded_efficiency()
    efficiency.figure(frame)
    efficiency.figure(frame, one_axis=True)
    assert drawn and all(clashes == [] for clashes in drawn), drawn


def test_measured_and_published_rows_get_their_own_panels(drawn, monkeypatch):
    from shb.reports import efficiency

    panels = []
    plt = figures.pyplot()
    original = plt.subplots

    def count(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        panels.append(axes.size)
        return fig, axes

    monkeypatch.setattr(plt, "subplots", count)
    efficiency.figure(_crowded_efficiency())
    efficiency.figure(_crowded_efficiency(), one_axis=True)
    assert panels == [2, 1]


def _asr_rows():
    import polars as pl

    rows = []
    for model, curve in (("toy-l2", [1.0, 0.6]), ("toy-l2-ahd", [0.0, 0.25])):
        for k, asr in zip((1, 8), curve):
            rows.append({"unit_id": f"u-{model}", "judge_hash": "h", "metric_id": "asr", "max_new_tokens": 32,
                         "answer_prefix": "", "model_id": model, "dataset_id": "h", "head_source": "sahara:s", "ablation_id": "ua",
                         "format": "chat", "decoding": '{"mode": "greedy"}', "judge_id": "keyword-paper", "k": k,
                         "baseline_asr": 0.05, "baseline_lo": 0.0, "baseline_hi": 0.2,
                         "ablated_asr": asr, "ablated_lo": asr / 2, "ablated_hi": asr})
    return pl.DataFrame(rows)


def test_asr_figures_put_models_side_by_side_on_request(monkeypatch):
    """across="models": one figure per setting with a line per model (each its own heads); the default
    draws a figure per model."""
    from shb.reports import asr

    drawn = []
    monkeypatch.setattr(figures, "intervals", lambda series, title, *a, **k: drawn.append((series, title)) or b"")
    (name, _), = asr.figures(_asr_rows(), across="models")
    (series, title), = drawn
    assert name == "asr-by-k-models-h-sahara_s-ua" and "models side by side" in title
    assert sorted(series) == ["toy-l2", "toy-l2-ahd"]
    assert sorted(series["toy-l2-ahd"]) == [(0, 0.05, 0.0, 0.2), (1, 0.0, 0.0, 0.0), (8, 0.25, 0.125, 0.25)]
    drawn.clear()
    assert [n for n, _ in asr.figures(_asr_rows())] == ["asr-by-k-toy-l2-h", "asr-by-k-toy-l2-ahd-h"]
    assert [list(series) for series, _ in drawn] == [["sahara:s"], ["sahara:s"]]
