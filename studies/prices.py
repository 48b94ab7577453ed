"""Reading studies/prices.yaml (the one editable file of prices, power and amortisation) and costing a machine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lia_model.errors import LiaInputError, from_validation_error

PRICES_FILE = Path(__file__).resolve().parent / "prices.yaml"
HOURS_PER_YEAR = 8760.0


class Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    price_usd: float = Field(ge=0, examples=[10000])
    price_source: str = Field(min_length=1, examples=["datasheet / list price / assumption: ..."])
    power_w: float = Field(ge=0, examples=[350])
    power_source: str = Field(min_length=1, examples=["datasheet: TDP 350 W"])


class Prices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str
    amortisation_years: float = Field(gt=0, examples=[3])
    amortisation_years_source: str = Field(min_length=1)
    electricity_usd_per_kwh: float = Field(ge=0, examples=[0.127])
    electricity_usd_per_kwh_source: str = Field(min_length=1)
    pue: float = Field(ge=1, examples=[1.58])
    pue_source: str = Field(min_length=1)
    parts: dict[str, Part]
    machines: dict[str, list[str]]

    @model_validator(mode="after")
    def _machines_use_known_parts(self) -> "Prices":
        for machine, parts in self.machines.items():
            unknown = [p for p in parts if p not in self.parts]
            if unknown:
                raise ValueError(f"machine {machine} lists unknown parts {unknown}; known: {sorted(self.parts)}")
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
        return self.cost_per_hour_usd(machine) / (tokens_per_s * 3600.0) * 1e6

    def _parts(self, machine: str) -> list[str]:
        if machine not in self.machines:
            raise LiaInputError("studies/prices.yaml machines", f"no price list for machine '{machine}'",
                                f"add it under machines:, e.g. {machine}: [server-platform-1s, ...]")
        return self.machines[machine]


@lru_cache(maxsize=4)
def load_prices(path: str = str(PRICES_FILE)) -> Prices:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LiaInputError(path, f"cannot read the price file ({err})", "check the file") from None
    try:
        return Prices.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, path, Prices) from None
