"""Where simulated houses are: seeded locations spread over real populated places.

``places.csv`` (its header names the source) lists a few hundred cities; a gateway's house is
one of them, picked with a weight growing with the city's population, plus a jitter of a few
kilometres. The pick is seeded by the device id alone, so a gateway lives at the same house in
every run and on every load-generating worker. The location is reported the way Mender
devices report inventory: as attributes (``geo-lat``, ``geo-lon``, ``geo-address``) with the
status.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.protocol.messages import GEO_ADDRESS, GEO_LAT, GEO_LON

PLACES_FILE = Path(__file__).with_name("places.csv")
JITTER_KM = 4.0
"""Standard deviation of a house's distance from its city's centre, for a city of 1 million."""
KM_PER_DEGREE = 111.2


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float
    population: int


@functools.cache
def places() -> tuple[Place, ...]:
    with PLACES_FILE.open(encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return tuple(
            Place(row["name"], row["country"], float(row["lat"]), float(row["lon"]),
                  int(row["population"]))
            for row in rows
        )  # fmt: skip


@functools.cache
def _cumulative_weights() -> tuple[float, ...]:
    # The square root of the population: big cities get more houses, small ones still some.
    return tuple(itertools.accumulate(math.sqrt(place.population) for place in places()))


def house_location(device_id: str) -> dict[str, Any]:
    """The inventory attributes of ``device_id``'s house: latitude, longitude, address label."""
    rng = random.Random(device_id)
    place = rng.choices(places(), cum_weights=_cumulative_weights())[0]
    spread = JITTER_KM * math.sqrt(place.population / 1e6) ** 0.5 / KM_PER_DEGREE
    lat = max(-89.9, min(89.9, place.lat + rng.gauss(0, spread)))
    lon = place.lon + rng.gauss(0, spread) / max(0.1, math.cos(math.radians(lat)))
    lon = (lon + 180) % 360 - 180
    address = f"house {rng.randrange(1, 1000)}, {place.name}, {place.country}"
    return {GEO_LAT: round(lat, 5), GEO_LON: round(lon, 5), GEO_ADDRESS: address}
