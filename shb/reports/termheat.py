"""A layer x head heatmap for the terminal, on a log scale so that the long tail of small scores
(paper Fig. 13) stays visible next to the few large ones.

Each cell is one character of a ramp (`` .:-=+*#%@``, darker = larger); on a colour terminal it is
also coloured along viridis (rich drops the colour where the terminal has none). Levels are evenly
spaced in log10 of the score from ``peak / 10**DECADES`` up to the peak; scores below that, zero or
negative print blank. When no score is positive (a signed score) the scale is by rank instead. The
top heads are named beside the grid. No torch here.
"""

from __future__ import annotations

import math

RAMP = " .:-=+*#%@"
VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
           "#fde725"]
DECADES = 4


def levels(values: list[float]) -> tuple[callable, str]:
    """A function value -> level (0 .. len(RAMP)-1) and a legend line describing the scale."""
    top = len(RAMP) - 1
    finite = [v for v in values if v is not None and math.isfinite(v)]
    peak = max(finite, default=0.0)
    if peak > 0:
        # from the smallest positive score (at most DECADES below the peak) to the peak
        lowest = math.log10(min(v for v in finite if v > 0))
        floor = max(math.log10(peak) - DECADES, lowest)
        span = math.log10(peak) - floor

        def level(v):
            if v is None or not math.isfinite(v) or v <= 0 or math.log10(v) < floor:
                return 0
            if span == 0:
                return top
            return max(1, min(top, 1 + math.floor((math.log10(v) - floor) / span * (top - 1))))

        # level j >= 1 starts at 10**(floor + (j-1) * span / (top-1))
        # every glyph of the grid with the score it starts at, so none has to be guessed
        bounds = [f"{RAMP[j]!r}>={10 ** (floor + (j - 1) * span / (top - 1)):.2g}" for j in range(1, top)]
        below = f"; ' ' below {10 ** floor:.2g} or <= 0" if lowest < floor else "; ' ' <= 0"
        return level, f"log scale: {' '.join(bounds)} '@'={peak:.3g}{below}; '?' not scored"
    ordered = sorted(finite)

    def by_rank(v):
        if v is None or not math.isfinite(v) or len(ordered) < 2:
            return 0
        import bisect

        return min(top, round(bisect.bisect_left(ordered, v) / (len(ordered) - 1) * top))

    steps = " ".join(repr(g) for g in RAMP[1:-1])
    return by_rank, (f"rank scale (no positive score): ' ' = lowest, then {steps} by rank, '@' = highest"
                     f" ({peak:.3g}); '?' not scored")


def render(grid: list[list[float | None]], title: str, top_n: int = 10, width: int = 80) -> list:
    """Rich Text lines: the title, a head-index header, one row per layer, the top heads beside the
    grid (or below it when the terminal is too narrow), and the scale legend."""
    from rich.text import Text

    n_layers = len(grid)
    n_heads = max((len(row) for row in grid), default=0)
    cells = [(layer, head, v) for layer, row in enumerate(grid) for head, v in enumerate(row)]
    level, legend = levels([v for _, _, v in cells])
    ranked = sorted((c for c in cells if c[2] is not None and math.isfinite(c[2])), key=lambda c: -c[2])[:top_n]
    from shb.reports.render import number

    names = [f"{i + 1:>2}. L{layer} H{head}  {number(v)}" for i, (layer, head, v) in enumerate(ranked)]
    side = max((len(n) for n in names), default=0)
    label = 6
    cell = 2 if label + 2 * n_heads + 3 + side <= width else 1
    beside = label + cell * n_heads + 3 + side <= width
    import textwrap

    # a long model or dataset id must not push the title past the terminal
    out = [Text(line, style="bold") for line in textwrap.wrap(title, width=max(20, width)) or [""]]
    if n_heads >= 10:
        out.append(Text(" " * label + "".join(f"{h // 10 if h % 10 == 0 else ' ':<{cell}}" for h in range(n_heads))))
    out.append(Text(" " * label + "".join(f"{h % 10:<{cell}}" for h in range(n_heads))
                    + ("   top heads" if beside and names else "")))
    for layer in range(n_layers):
        line = Text(f"  L{layer:<3d}")
        for head in range(n_heads):
            v = grid[layer][head] if head < len(grid[layer]) else None
            j = level(v)
            line.append((RAMP[j] if v is not None else "?") * cell, style=VIRIDIS[j] if j else "")
        if beside and layer < len(names):
            line.append("   " + names[layer])
        out.append(line)
    rest = names[n_layers:] if beside else names
    for name in rest:
        out.append(Text(" " * (label + cell * n_heads + 3 if beside else label) + name))
    out += [Text(line, style="dim") for line in textwrap.wrap(legend, width=max(20, width))]
    return out
