"""Prices, power and amortisation of machines, and what an hour and a million tokens cost (pure: no I/O).

The schema of ``studies/prices.yaml`` (the project's price file, every number with its source); the file is
read at the I/O edge (``lia_model.inputs.load_prices``). The two formulas, in one place:

  cost per hour (USD)          = purchase price / (amortisation_years x 8760 h)
                                 + power_kw x pue x electricity_usd_per_kwh
  cost per million tokens (USD) = cost per hour / (generated tokens per second x 3600 s) x 1e6

with the machine busy all the time on the modelled workload (utilisation 1).
"""

from __future__ import annotations

from pydantic import Field, PrivateAttr, model_validator

from lia_model.errors import LiaInputError
from lia_model.hardware import StrictSpec

HOURS_PER_YEAR = 8760.0
S_PER_HOUR = 3600.0
TOKENS_PER_MTOK = 1e6


class Part(StrictSpec):  # frozen, no unknown fields, no inf/NaN, no true/false for a number (true was 1 USD)
    description: str = ""
    price_usd: float = Field(ge=0, allow_inf_nan=False, examples=[10000])
    price_source: str = Field(min_length=1, examples=["datasheet / list price / assumption: ..."])
    power_w: float = Field(ge=0, allow_inf_nan=False, examples=[350])
    power_source: str = Field(min_length=1, examples=["datasheet: TDP 350 W"])


class Prices(StrictSpec):
    currency: str = Field(pattern="^USD$", examples=["USD"])
    amortisation_years: float = Field(gt=0, allow_inf_nan=False, examples=[3])
    amortisation_years_source: str = Field(min_length=1)
    electricity_usd_per_kwh: float = Field(ge=0, allow_inf_nan=False, examples=[0.127])
    electricity_usd_per_kwh_source: str = Field(min_length=1)
    pue: float = Field(ge=1, allow_inf_nan=False, examples=[1.58])
    pue_source: str = Field(min_length=1)
    parts: dict[str, Part]
    machines: dict[str, list[str]]
    _where: str = PrivateAttr("prices")  # the file it came from, for error messages (set by the loader)

    @model_validator(mode="after")
    def _machines_use_known_parts(self) -> "Prices":
        for machine, parts in self.machines.items():
            unknown = [p for p in parts if p not in self.parts]
            if unknown:
                raise ValueError(f"machine {machine} lists unknown parts {unknown}; known: {sorted(self.parts)}")
            if not parts:
                raise ValueError(f"machine {machine} lists no parts")
        return self

    def located(self, where: str) -> "Prices":
        """The same prices, naming ``where`` (the file) in error messages."""
        self._where = where
        return self

    def capex_usd(self, machine: str) -> float:
        return sum(self.parts[p].price_usd for p in self._parts(machine))

    def power_w(self, machine: str) -> float:
        return sum(self.parts[p].power_w for p in self._parts(machine))

    def cost_per_hour_usd(self, machine: str) -> float:
        """Amortised purchase price plus electricity (with the data centre's PUE), per hour."""
        capital = self.capex_usd(machine) / (self.amortisation_years * HOURS_PER_YEAR)
        energy = self.power_w(machine) / 1000.0 * self.pue * self.electricity_usd_per_kwh
        return capital + energy

    def usd_per_million_tokens(self, machine: str, tokens_per_s: float) -> float:
        return self.cost_per_hour_usd(machine) / (tokens_per_s * S_PER_HOUR) * TOKENS_PER_MTOK

    def _parts(self, machine: str) -> list[str]:
        if machine not in self.machines:
            raise LiaInputError(
                f"{self._where}: machines",
                f"no price list for machine '{machine}'",
                f"add it under machines:, e.g. {machine}: [server-platform-1s, ...] "
                f"(priced now: {', '.join(self.machines)})",
            )
        return self.machines[machine]
