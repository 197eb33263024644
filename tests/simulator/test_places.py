"""Simulated houses' locations: real places, seeded by device id, spread with jitter."""

from __future__ import annotations

import math

from backend.protocol.messages import GEO_ADDRESS, GEO_LAT, GEO_LON
from simulator import places
from simulator.places import house_location


def test_the_places_file_holds_a_few_hundred_real_places_worldwide() -> None:
    found = places.places()
    assert 300 <= len(found) <= 1000
    assert len({place.country for place in found}) >= 100
    assert all(-90 <= p.lat <= 90 and -180 <= p.lon <= 180 and p.population > 0 for p in found)
    by_name = {place.name: place for place in found}
    assert math.isclose(by_name["Buenos Aires"].lat, -34.61, abs_tol=0.05)


def test_a_device_lives_at_the_same_house_every_time() -> None:
    assert house_location("gw-000042") == house_location("gw-000042")
    assert house_location("gw-000042") != house_location("gw-000043")


def test_houses_are_near_a_place_and_spread_over_many() -> None:
    centres = {(place.name, place.country): place for place in places.places()}
    cities = set()
    for index in range(2000):
        location = house_location(f"gw-{index:06d}")
        address = location[GEO_ADDRESS]
        _house, *city = address.split(", ")
        cities.add(tuple(city))
        place = centres[tuple(city)]
        assert abs(location[GEO_LAT] - place.lat) < 1.0, address
        assert abs((location[GEO_LON] - place.lon + 180) % 360 - 180) < 3.0, address
    assert len(cities) > 250  # not piled onto the biggest cities
    jittered = house_location("gw-000001")
    assert (jittered[GEO_LAT], jittered[GEO_LON]) not in {(p.lat, p.lon) for p in centres.values()}
