"""Figures for the reports (matplotlib, an optional extra). Every function returns PNG bytes.

matplotlib is imported inside ``pyplot()`` so that ``shb report`` works without it for the text
formats; asking for a picture without it gives one clear message naming the extra to install.
No torch here.
"""

from __future__ import annotations

import io
import json
import math
import re

from shb.errors import UsageError

DPI = 110


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or a UsageError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("figures need matplotlib: pip install 'shb[figures]' (or use --format table/json/csv)") from None
    matplotlib.use("Agg", force=True)  # no display here, and never pop up windows from a CLI
    import matplotlib.pyplot as plt

    return plt


def slug(*parts) -> str:
    """A file-name-safe label for a figure: 'ships-heatmap-toy-a-toy-harmful-ua'."""
    text = "-".join(str(p) for p in parts if p is not None)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "figure"


def _png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def legend_outside(ax, fontsize=7):
    """The legend to the right of the axes, never over the data (bbox_inches="tight" keeps it in)."""
    import textwrap

    handles, labels = ax.get_legend_handles_labels()
    if handles:
        labels = [textwrap.fill(label, 42, subsequent_indent="  ") for label in labels]
        ax.legend(handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False)


def integer_axis(axis, values) -> bool:
    """Whole-number ticks on ``axis`` (ax.xaxis / ax.yaxis) when every value is a whole number (counts
    such as Sahara's step k: no half steps). Returns whether it did."""
    from matplotlib.ticker import MaxNLocator

    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or any(float(v) != int(v) for v in finite):
        return False
    axis.set_major_locator(MaxNLocator(integer=True))
    return True


def _overlap(a, b) -> float:
    """The area (pixels) two boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def place_labels(ax, points: list[tuple[float, float, str]], fontsize=7) -> list:
    """Annotate each (x, y, text) beside its point where it overlaps neither an earlier label nor a
    marker nor leaves the axes: candidate offsets are tried in turn (right, left, above, below, then further out with a
    thin leader line); the first free one wins, else the one sharing the least area. Returns the annotations."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()  # pixel positions need a laid-out figure
    renderer = fig.canvas.get_renderer()
    markers = [ax.transData.transform((x, y)) for x, y, _ in points]
    frame = ax.get_window_extent(renderer)  # labels stay inside the axes (the legend lives outside)
    near = [(6, 3, "left", "bottom"), (6, -3, "left", "top"), (-6, 3, "right", "bottom"),
            (-6, -3, "right", "top"), (0, 8, "center", "bottom"), (0, -8, "center", "top")]
    far = [(dx * k, dy * k, ha, va) for k in (3, 5) for dx, dy, ha, va in near]
    # a crowded cluster: a column of spots to either side, reached by a leader line
    far += [(sx * dx, 11 * i * sy, "left" if sx > 0 else "right", "center") for dx in (40, 90)
            for i in range(0, 9) for sx in (1, -1) for sy in ((1, -1) if i else (1,))]
    taken, made = [], []
    for x, y, text in points:
        best = None
        for n, (dx, dy, ha, va) in enumerate(near + far):
            leader = {"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if n >= len(near) else None
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha=ha, va=va, arrowprops=leader)
            # the text's own box: an Annotation's extent also spans its leader line back to the point
            note.update_positions(renderer)  # (Annotation.get_window_extent would; Text's does not)
            box = Text.get_window_extent(note, renderer).padded(4)
            # a label over another is unreadable; one over a marker or past the frame is only untidy
            hits = (100 * sum(_overlap(box, t) for t in taken)
                    + 400 * sum(bool(box.contains(px, py)) for px, py in markers)
                    + 10 * (box.width * box.height - _overlap(box, frame)))
            if best is None or hits < best[2]:
                if best is not None:
                    best[0].remove()
                best = (note, box, hits)
            else:
                note.remove()
            if hits == 0:
                break
        taken.append(best[1])
        made.append(best[0])
    return made


def overlapping_texts(fig, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` (titles, labels, tick labels, annotations, legend
    entries) whose drawn boxes overlap by more than ``tolerance`` square pixels: what a reader cannot read."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t.figure is fig]
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts]  # text only, not leader lines
    clashes = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            if _overlap(box_a, box_b) > tolerance:
                clashes.append((a, b))
    return clashes


def varying_parts(rows: list[dict], columns: list[str]) -> tuple[list[str], str]:
    """The columns whose value differs between ``rows`` (worth a legend entry) and the constant ones as a
    "column: value · ..." line (worth a title line once): short legends that still tell series apart."""
    varying = [c for c in columns if len({str(r.get(c)) for r in rows}) > 1]
    constant = " · ".join(f"{c.removesuffix('_id')}: {rows[0].get(c)}" for c in columns
                          if c not in varying and rows and rows[0].get(c) not in (None, "", "-"))
    return varying, constant


# A line of a figure is one unit (and one judge configuration): what is drawn as one curve was measured
# as one content. Its legend names the label columns that differ between the lines of one panel, and
# where two lines still read the same, the parts of their stored specs that differ (a seed, the dataset
# the heads were chosen on, an explicit head list, an answer prefix).
LINE = ["unit_id", "judge_id", "judge_hash"]
# Label columns whose value names itself in a legend ("sahara:s", "ua"); any other is shown as name=value.
SELF_NAMED = {"model_id", "metric_id", "head_source", "ablation_id", "format", "decoding", "judge_id", "dataset_id"}


def _part(column: str, value) -> str:
    return str(value) if column in SELF_NAMED else f"{column.removesuffix('_id')}={value if value not in (None, '') else '-'}"


def _flat(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True, default=str) if isinstance(value, list) else value}


def unit_lines(rows: list[dict], columns: list[str], specs: dict | None = None) -> tuple[dict[tuple, str], str]:
    """({line key: legend label}, title line of what every line shares) for ``rows`` (dicts with the
    ``LINE`` columns and ``columns``); one key per unit and judge. ``specs``: {unit id: its stored spec}."""
    first: dict[tuple, dict] = {}
    for r in rows:
        first.setdefault(tuple(r.get(c) for c in LINE), r)
    varying, shared = varying_parts(list(first.values()), columns)
    labels = {key: " / ".join(_part(c, r.get(c)) for c in varying if c in SELF_NAMED and r.get(c) not in (None, "")
                              or c not in SELF_NAMED) for key, r in first.items()}
    by_label: dict[str, list[tuple]] = {}
    for key, label in labels.items():
        by_label.setdefault(label, []).append(key)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        flat = {key: _flat({k: v for k, v in ((specs or {}).get(key[0]) or {}).items() if k != "version"})
                for key in keys}
        paths = sorted({p for f in flat.values() for p in f})
        differ = [p for p in paths if len({str(f.get(p, "-")) for f in flat.values()}) > 1]
        if len(differ) > 1:   # the upstream unit's id differs whenever what chose its heads does
            differ = [p for p in differ if p != "upstream"]
        for key in keys:
            parts = [f"{p.removeprefix('metric.')}={str(flat[key].get(p, '-'))[:16]}" for p in differ]
            if not differ:   # one unit, two configurations of one judge
                parts = [f"judge {str(key[2])[:8]}"] if key[2] else [f"unit {key[0]}"]
            labels[key] = " / ".join(x for x in (label, ", ".join(parts)) if x)
    # a lone line: named by its first label column (e.g. its head source)
    return {key: label or str(next((first[key][c] for c in columns if first[key].get(c) not in (None, "")), key[0]))
            for key, label in labels.items()}, shared


def intervals(series: dict[str, list[tuple[float, float, float | None, float | None]]], title: str,
              xlabel: str, ylabel: str, ylim=(0, 1)) -> bytes:
    """One line per label through (x, y) with y's interval [lo, hi] as error bars (e.g. ASR against k)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in series.items():
        points = sorted(points)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        lo = [y - (p[2] if p[2] is not None else y) for y, p in zip(ys, points)]
        hi = [(p[3] if p[3] is not None else y) - y for y, p in zip(ys, points)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", markersize=4, capsize=3, label=label)
    integer_axis(ax.xaxis, [p[0] for points in series.values() for p in points])
    if ylim:
        ax.set_ylim(ylim[0] - 0.03, ylim[1] + 0.03)
    return _finish_line_plot(fig, ax, title, xlabel, ylabel)


def bars(groups: dict[str, list[tuple[str, float, float | None, float | None]]], title: str, ylabel: str) -> bytes:
    """Horizontal bars, one panel per group (e.g. a utility measure): (label, value, lo, hi) each, the
    interval as an error bar and a zero line, labels on the axis (so they never overlap the bars)."""
    plt = pyplot()
    n = max(1, len(groups))
    height = max(2.2, 0.9 + 0.32 * max((len(v) for v in groups.values()), default=1))
    fig, axes = plt.subplots(n, 1, figsize=(7.5, height * n), squeeze=False)
    for ax, (name, items) in zip(axes[:, 0], groups.items()):
        ys = list(range(len(items)))[::-1]
        values = [v for _, v, _, _ in items]
        lo = [v - (a if a is not None else v) for _, v, a, _ in items]
        hi = [(b if b is not None else v) - v for _, v, _, b in items]
        ax.barh(ys, values, xerr=[lo, hi], color="#4477aa", capsize=3, height=0.6)
        ax.set_yticks(ys)
        ax.set_yticklabels([label for label, _, _, _ in items], fontsize=8)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(alpha=0.3, axis="x")
        ax.set_xlabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def heatmap(grid: list[list[float]], title: str, colorbar: str, xlabel="head", ylabel="layer",
            log: bool = False) -> bytes:
    """A layer x head heatmap (rows: layers from 0 at the top, columns: heads), paper Fig. 4b / 7.

    ``log``: a log colour scale over at most four decades below the peak, so the long tail of small
    scores (Fig. 13) is not one flat colour; zero, negative and smaller values take the lowest colour."""
    plt = pyplot()
    n_layers, n_heads = len(grid), len(grid[0]) if grid else 0
    fig, ax = plt.subplots(figsize=(min(14, 2.5 + 0.32 * n_heads), min(12, 1.8 + 0.28 * n_layers)))
    norm = None
    positive = [v for row in grid for v in row if v is not None and math.isfinite(v) and v > 0]
    if log and positive and max(positive) > min(positive):
        from matplotlib.colors import LogNorm

        peak = max(positive)
        norm = LogNorm(vmin=max(min(positive), peak * 1e-4), vmax=peak, clip=True)
        grid = [[v if v is None or not math.isfinite(v) or v > 0 else norm.vmin for v in row] for row in grid]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", norm=norm)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    step_x = max(1, math.ceil(n_heads / 16))
    step_y = max(1, math.ceil(n_layers / 16))
    ax.set_xticks(range(0, n_heads, step_x))
    ax.set_yticks(range(0, n_layers, step_y))
    fig.colorbar(image, ax=ax, label=colorbar + (" (log scale)" if norm is not None else ""))
    return _png(fig)


def histogram(values: list[float], title: str, xlabel: str, marks: dict[str, float] | None = None) -> bytes:
    """Distribution of scores (paper Fig. 13), log count axis, with optional labelled vertical marks."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.hist(values, bins=min(60, max(10, int(math.sqrt(len(values) or 1)))), color="#4477aa", edgecolor="white")
    ax.set_yscale("log")
    for (label, x), colour in zip((marks or {}).items(), ("#cc3311", "#ee7733", "#009988")):
        ax.axvline(x, color=colour, linestyle="--", linewidth=1.2, label=f"{label} = {x:.3g}")
    if marks:
        legend_outside(ax, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count (log)")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _finish_line_plot(fig, ax, title: str, xlabel: str, ylabel: str) -> bytes:
    """Labels, title, the legend outside the axes and a light grid: the PNG of a line plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return _png(fig)


def lines(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str) -> bytes:
    """One line per label: (x, y) points, e.g. ASR change against the number of ablated heads."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(0, color="grey", linewidth=0.8)
    integer_axis(ax.xaxis, [x for xs, _ in series.values() for x in xs])
    return _finish_line_plot(fig, ax, title, xlabel, ylabel)


OUTCOME_COLOURS = {"refused": "#4c78a8", "complied": "#e45756", "broken": "#9d9d9d", "undetermined": "#f2cf5b"}


def stacked_shares(bars: list[tuple[str, list[float], float | None]], parts: list[str], title: str) -> bytes:
    """Horizontal bars (label, shares of ``parts`` summing to 1, marker) stacked left to right; the
    marker (e.g. the binary ASR) is drawn as a black tick on its bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(bars)))
    ys = list(range(len(bars)))[::-1]   # first bar on top
    left = [0.0] * len(bars)
    for i, part in enumerate(parts):
        widths = [b[1][i] or 0.0 for b in bars]
        ax.barh(ys, widths, left=left, color=OUTCOME_COLOURS.get(part), label=part, height=0.7)
        left = [a + w for a, w in zip(left, widths)]
    marked = [(y, b[2]) for y, b in zip(ys, bars) if b[2] is not None]
    if marked:
        ax.scatter([m for _, m in marked], [y for y, _ in marked], marker="|", s=220, color="black",
                   label="ASR (binary verdict)", zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answers")
    ax.set_title(title, fontsize=10)
    legend_outside(ax)
    return _png(fig)


def matrix(values: list[list[float]], labels: list[str], title: str, colorbar: str,
           annotations: list[list[str]] | None = None, vmin=0.0, vmax=1.0) -> bytes:
    """A square pairwise matrix (e.g. top-k Jaccard between results), cells annotated."""
    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * n, 1.8 + 0.8 * n))
    image = ax.imshow(values, cmap="magma", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            text = annotations[i][j] if annotations else f"{values[i][j]:.2f}"
            bright = values[i][j] is not None and values[i][j] > (vmin + vmax) / 2
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar)
    return _png(fig)


def scatter(points: list[dict], title: str, xlabel: str, ylabel: str) -> bytes:
    """Points {x, y, label, series, published}: measured series are joined lines with each point's
    label beside it (e.g. k); published points are squares labelled with their method. Log x axis
    (parameter shares span decades)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    usable = [p for p in points if p["x"] is not None and p["x"] > 0 and p["y"] is not None]
    labels = []
    for series in dict.fromkeys(p["series"] for p in usable if not p["published"]):
        chosen = sorted((p for p in usable if p["series"] == series and not p["published"]), key=lambda p: p["x"])
        ax.plot([p["x"] for p in chosen], [p["y"] for p in chosen], marker="o", markersize=5, label=series)
        labels += [(p["x"], p["y"], str(p["label"])) for p in chosen if p.get("label") not in (None, "")]
    published = [p for p in usable if p["published"]]
    if published:
        ax.scatter([p["x"] for p in published], [p["y"] for p in published], marker="s", s=45, color="black",
                   label="published (not measured here)", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    ax.margins(x=0.12, y=0.1)  # room inside the axes for the labels of the outermost points
    # published points first: their method names matter most, so they get the free spots
    # one label per spot: series that coincide (same k, same ASR) would stack identical labels
    wanted = [(p["x"], p["y"], str(p["label"])) for p in published] + labels
    place_labels(ax, list(dict.fromkeys(wanted)))
    return _png(fig)


def write(figures: list[tuple[str, bytes]], out_dir) -> list[str]:
    """Write (name, png) pairs as out_dir/name.png; returns the paths written."""
    from shb.paths import check_out_dir, check_out_file, write_out_file

    directory = check_out_dir(out_dir)
    for name, _ in figures:  # every name first: refuse before writing any of them
        check_out_file(directory / f"{name}.png")
    directory.mkdir(parents=True, exist_ok=True)
    return [str(write_out_file(directory / f"{name}.png", lambda tmp, blob=blob: tmp.write_bytes(blob)))
            for name, blob in figures]
