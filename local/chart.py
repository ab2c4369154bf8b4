"""Loss curves as a small chart in the terminal: no plotting library, just characters on a grid."""

from __future__ import annotations

import math


def plot(series: dict[str, list[tuple[float, float]]], width: int = 60, height: int = 12,
         marks: str = "•◆▲") -> list[str]:
    """Lines of text: each series' (x, y) points on one grid with a y axis of three labels, the x range below,
    and a legend. Points outside the finite range (NaN, inf) are left out."""
    points = {name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for name, pts in series.items()}
    every = [p for pts in points.values() for p in pts]
    if not every:
        return ["(no figures to plot)"]
    xs, ys = [x for x, _ in every], [y for _, y in every]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]
    for (name, pts), mark in zip(points.items(), marks):
        for x, y in pts:
            col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (width - 1))
            row = round((y1 - y) / (y1 - y0) * (height - 1))
            grid[row][col] = mark
    labels = {0: f"{y1:.3g}", (height - 1) // 2: f"{(y0 + y1) / 2:.3g}", height - 1: f"{y0:.3g}"}
    pad = max(len(v) for v in labels.values())
    lines = [f"{labels.get(i, ''):>{pad}} ┤{''.join(row)}" for i, row in enumerate(grid)]
    lines.append(f"{'':>{pad}} └{'─' * width}")
    left, right = f"{x0:g}", f"step {x1:g}"
    lines.append(f"{'':>{pad}}  {left}{right:>{width - len(left)}}")
    lines.append(f"{'':>{pad}}  " + "   ".join(f"{mark} {name}" for name, mark in zip(points, marks)))
    return lines
