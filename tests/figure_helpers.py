"""What the figure tests use to look at what a plot function drew (not part of the library).

The ``plot_*`` functions build a ``matplotlib.figure.Figure``, write it with
``astropt.figures._save`` and return nothing (or a summary). The ``saved_figures`` fixture
keeps each figure they write, as drawn: the PNG is still written, and the figure is not
cleared afterwards. Import the fixture into a test module to use it::

    from figure_helpers import saved_figures  # noqa: F401 (a fixture)

    def test_x(tmp_path, saved_figures):
        plot_thing(..., tmp_path / "x.png")
        fig = saved_figures[tmp_path / "x.png"]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

# Modules whose ``_save`` writes the figures (astropt.predict imports it from astropt.figures).
WRITERS = ("astropt.figures", "astropt.predict")


@pytest.fixture
def saved_figures(monkeypatch) -> dict[Path, object]:
    """``{path: Figure}`` of every figure written by a ``plot_*`` function during the test.

    Only writer modules already imported are patched (importing ``astropt.predict`` would
    import torch)."""
    saved: dict[Path, object] = {}
    for name in WRITERS:
        module = sys.modules.get(name)
        if module is None or not hasattr(module, "_save"):
            continue
        original = module._save

        def keep(fig, out, *args, _original=original, **kwargs):
            fig.clear = lambda *a, **k: None  # _save clears the figure once written: keep what was drawn
            result = _original(fig, out, *args, **kwargs)
            assert Path(out).is_file(), f"{out} was not written"
            saved[Path(out)] = fig
            return result

        monkeypatch.setattr(module, "_save", keep)
    return saved


def panels(fig) -> list:
    """The figure's visible axes that are not colour bars, in drawing order."""
    return [ax for ax in fig.axes if ax.get_visible() and not is_colorbar(ax)]


def is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def colorbars(fig) -> list:
    """The colour bars of a figure (each a ``Colorbar``)."""
    return [ax._colorbar for ax in fig.axes if is_colorbar(ax)]


def legend_texts(ax) -> list[str]:
    """The labels of the axes' legend and of any legend kept beside it as an artist."""
    legends = [ax.get_legend(), *(a for a in ax.artists if hasattr(a, "get_texts"))]
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def flat(text: str) -> str:
    """A label with its line breaks and runs of spaces collapsed."""
    return " ".join(text.split())


def shown_number(label: str, name: str) -> tuple[float, int]:
    """The number shown after ``{name} = `` in a label, and its decimals."""
    match = re.search(re.escape(name) + r" = ([-+]?\d+(?:\.(\d+))?)", label)
    assert match, f"no '{name} = <number>' in {label!r}"
    return float(match.group(1)), len(match.group(2) or "")


def data_lines(ax) -> list:
    """The axes' lines that hold data (legend-only entries ``plot([], [])`` left out)."""
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def xy(line) -> np.ndarray:
    """A line's points as an (n, 2) array."""
    return np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
