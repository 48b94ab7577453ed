"""The project's price file, studies/prices.yaml (the one editable file of prices, power and amortisation).

The schema and the cost formulas are ``lia_model.prices`` (one copy); this module only knows where the
file is and reads it once per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lia_model.prices import HOURS_PER_YEAR, Part, Prices  # noqa: F401  (re-exported)

PRICES_FILE = Path(__file__).resolve().parent / "prices.yaml"


@lru_cache(maxsize=4)
def load_prices(path: str = str(PRICES_FILE)) -> Prices:
    from lia_model.inputs import load_prices as read

    return read(path)
