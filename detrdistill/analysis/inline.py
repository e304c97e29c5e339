"""Show the analysis modules' pyplot-free ``Figure`` objects as pictures in notebooks.

IPython renders a matplotlib ``Figure`` as a PNG only after pyplot has set up its inline
backend; these modules never import pyplot (no global state, headless saving), so without
this a cell ending in a figure would print ``<Figure size ...>`` instead of the picture.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 110


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def register_png_display() -> bool:
    """In an IPython kernel, display every ``Figure`` as PNG; True when registered."""
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is only in the notebooks extra
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
    return True
