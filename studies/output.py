"""Writing a study's CSV and figure so that the same command writes the same bytes.

CSV: rows sorted by the study's key columns (``framework.rows_to_frame``), floats with a fixed
``%.6g`` format, empty cells for missing values, ``\\n`` line ends, no timestamps. Figures: PNG and SVG
without creation dates and with a fixed SVG hash salt, so re-running a study gives no spurious diff.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FLOAT_FORMAT = "%.6g"


def frame_to_csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT, na_rep="", lineterminator="\n")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame_to_csv_text(frame))


def read_csv(path: Path) -> pd.DataFrame:
    """Read a study CSV back (policy vectors such as ``(0,1,1,0,0,0)`` stay strings)."""
    return pd.read_csv(path, keep_default_na=True)


def save_figure(fig, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` without timestamps; returns the paths."""
    import matplotlib
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with matplotlib.rc_context({"svg.hashsalt": "lia-studies", "svg.fonttype": "none"}):
        fig.savefig(png, dpi=200, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.02)
        fig.savefig(svg, metadata={"Date": None, "Creator": None}, bbox_inches="tight", pad_inches=0.02)
    plt.close(fig)
    _palette_png(png)
    return [png, svg]


def _palette_png(path: Path) -> None:
    """Re-save a PNG with a 256-colour palette: a third of the size, no visible change for line and bar
    charts (the committed figures stay small)."""
    from PIL import Image

    with Image.open(path) as image:
        quantized = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    quantized.save(path, optimize=True)
