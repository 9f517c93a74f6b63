"""Figure margins from the font metrics of the labels, shared by the analysis and inference figures.

Matplotlib's constrained layout (and ``mplhep.cms.label``, which draws the figure to place its
texts) measure every artist of the figure again at each draw: about as long as the drawing
itself, seconds per figure on a loaded machine. Here the margins are computed once from the
sizes of the texts that will be drawn (tick labels within the limits, axis labels), and set
with ``subplots_adjust``. The figure tests check that every text stays inside the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.font_manager import FontProperties

#: on top of the CMS style: no minor ticks (each tick is a set of artists; they made up half of
#: the drawing time of these figures)
NO_MINOR_TICKS: dict[str, Any] = {"xtick.minor.visible": False, "ytick.minor.visible": False}


def text_size(fig: plt.Figure, texts: Sequence[str], size: float | str) -> tuple[float, float]:
    """Largest width and height, in inches, of ``texts`` at font ``size``."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg
    prop = FontProperties(size=size)
    width = height = 0.0
    for text in texts:
        w, h, _ = renderer.get_text_width_height_descent(text, prop, ismath="$" in text)
        width, height = max(width, w), max(height, h)
    return width / fig.dpi, height / fig.dpi


def tick_strings(ax: plt.Axes, axis: str) -> list[str]:
    """The major tick labels ``ax`` will draw on ``axis`` ("x" or "y") within its limits."""
    which = ax.xaxis if axis == "x" else ax.yaxis
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    locs = [v for v in which.get_major_locator().tick_values(low, high) if low - 1e-9 <= v <= high + 1e-9]
    return [t for t in which.get_major_formatter().format_ticks(locs) if t]


def place(fig: plt.Figure, left: float, right: float, bottom: float, top: float, **space: float) -> None:
    """Margins in inches (``hspace``/``wspace`` as fractions, as ``subplots_adjust``)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        **space)  # fmt: skip


def label_height(fig: plt.Figure, text: str, size: float | str) -> float:
    return text_size(fig, [text], size)[1] if text else 0.0


def y_margin(fig: plt.Figure, axes: Sequence[plt.Axes]) -> float:
    """Room left of ``axes`` for their y tick labels and y labels, in inches."""
    room = 0.0
    for ax in axes:
        ticks = text_size(fig, tick_strings(ax, "y"), plt.rcParams["ytick.labelsize"])[0]
        label = label_height(fig, ax.get_ylabel(), ax.yaxis.label.get_fontsize())
        room = max(room, ticks + label + (plt.rcParams["ytick.major.pad"] + plt.rcParams["axes.labelpad"]) / 72)
    return room + 0.25


def x_margin(fig: plt.Figure, ax: plt.Axes) -> float:
    """Room below ``ax`` for its x tick labels and x label, in inches."""
    ticks = text_size(fig, tick_strings(ax, "x") or ["0"], ax.xaxis.get_ticklabels()[0].get_fontsize()
                      if ax.xaxis.get_ticklabels() else plt.rcParams["xtick.labelsize"])[1]  # fmt: skip
    label = label_height(fig, ax.get_xlabel(), ax.xaxis.label.get_fontsize())
    return ticks + label + (plt.rcParams["xtick.major.pad"] + plt.rcParams["axes.labelpad"]) / 72 + 0.15


def place_stacked(fig: plt.Figure, axes: Sequence[plt.Axes], top: float = 0.5, hspace: float = 0.08) -> None:
    """Margins of vertically stacked axes sharing x (a distribution over its ratio panel): room
    for the y labels of all, the x labels of the lowest, half of its last x tick label at the
    right and ``top`` inches above (the CMS header). Placed twice: the number of ticks follows
    the size of the axes."""
    lowest = axes[-1]
    for _ in range(2):
        right = 0.5 * text_size(fig, tick_strings(lowest, "x")[-1:], plt.rcParams["xtick.labelsize"])[0] + 0.15
        place(fig, y_margin(fig, axes), right, x_margin(fig, lowest), top, hspace=hspace)
