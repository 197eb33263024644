"""The flaky-network model: profile maths, fault statistics, TOML profiles and fleet mixes."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from pathlib import Path

import pytest

from simulator.network import (
    PROFILES,
    NetworkMix,
    NetworkProfile,
    load_profiles,
    parse_mix,
    scenario_mix,
)

FAULTY = NetworkProfile(
    name="faulty",
    drops_per_hour=6.0,
    blackholes_per_hour=3.0,
    blackhole_mean=20.0,
    offline_per_hour=1.0,
    offline_mean=90.0,
)


def names(mix: NetworkMix, indexes: range) -> Counter[str]:
    return Counter(mix.profile_for(i).name for i in indexes)


# --- profiles --------------------------------------------------------------------------------


def test_delay_adds_latency_and_serialisation_time() -> None:
    profile = NetworkProfile(name="p", latency=0.1, bandwidth=1000.0)
    assert profile.delay(500, random.Random(1)) == pytest.approx(0.6)
    assert profile.delay(0, random.Random(1)) == pytest.approx(0.1)


def test_arrival_keeps_order_and_serialises_back_to_back_writes() -> None:
    profile = NetworkProfile(name="p", latency=0.1, bandwidth=1000.0)
    first = profile.arrival(10.0, 500, random.Random(1), busy_until=0.0)
    assert first == pytest.approx(10.6)
    # Written at once behind it: it cannot overtake, and waits for its own 0.5 s on the wire.
    assert profile.arrival(10.0, 500, random.Random(1), busy_until=first) == pytest.approx(11.1)
    # Both legs of a round trip, each with its latency.
    assert profile.arrival(10.0, 0, random.Random(1), 0.0, legs=2) == pytest.approx(10.2)


def test_departure_is_serialisation_only() -> None:
    profile = NetworkProfile(name="p", latency=0.1, bandwidth=1000.0)
    assert profile.departure(10.0, 500, busy_until=0.0) == pytest.approx(10.5)
    assert profile.departure(10.0, 500, busy_until=10.5) == pytest.approx(11.0)


def test_zero_bandwidth_is_unlimited() -> None:
    profile = NetworkProfile(name="p", latency=0.05)
    assert profile.delay(10**9, random.Random(1)) == pytest.approx(0.05)


def test_jitter_spreads_uniformly_above_latency() -> None:
    profile = NetworkProfile(name="p", latency=0.1, jitter=0.02)
    rng = random.Random(7)
    delays = [profile.delay(0, rng) for _ in range(5000)]
    assert all(0.1 <= d <= 0.12 for d in delays)
    assert min(delays) < 0.101
    assert max(delays) > 0.119
    assert statistics.fmean(delays) == pytest.approx(0.11, abs=0.0005)


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="nbytes"):
        PROFILES["lte"].delay(-1, random.Random(1))


@pytest.mark.parametrize("field", ["latency", "jitter", "bandwidth", "offline_mean"])
@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, "5ms", True])
def test_invalid_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        NetworkProfile(name="p", **{field: value})  # type: ignore[arg-type]


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="name"):
        NetworkProfile(name="")


@pytest.mark.parametrize(
    ("rate", "mean"),
    [("blackholes_per_hour", "blackhole_mean"), ("offline_per_hour", "offline_mean")],
)
def test_fault_rate_needs_a_duration(rate: str, mean: str) -> None:
    with pytest.raises(ValueError, match=mean):
        NetworkProfile(name="p", **{rate: 1.0})


def test_with_overrides_changes_only_the_named_fields() -> None:
    lte = PROFILES["lte"]
    slower = lte.with_overrides(latency=0.2)
    assert slower.latency == 0.2
    assert slower.jitter == lte.jitter
    assert slower.drops_per_hour == lte.drops_per_hour
    assert lte.latency == 0.040


def test_with_overrides_validates() -> None:
    with pytest.raises(ValueError, match="jitter"):
        PROFILES["lte"].with_overrides(jitter=-1.0)
    with pytest.raises(ValueError, match=r"unknown key 'latncy'.*latency"):
        PROFILES["lte"].with_overrides(latncy=0.1)


def test_named_profiles_are_ordered_like_their_links() -> None:
    assert set(PROFILES) == {"wired", "lte", "3g", "gprs", "satellite"}
    assert all(profile.name == name for name, profile in PROFILES.items())
    ladder = [PROFILES[name] for name in ("wired", "lte", "3g", "gprs")]
    assert [p.latency for p in ladder] == sorted(p.latency for p in ladder)
    assert [p.bandwidth for p in ladder] == sorted((p.bandwidth for p in ladder), reverse=True)
    assert [p.drops_per_hour for p in ladder] == sorted(p.drops_per_hour for p in ladder)
    assert 1.0 <= PROFILES["gprs"].handshake_delay <= 2.0
    assert PROFILES["satellite"].latency > PROFILES["3g"].latency


# --- faults ----------------------------------------------------------------------------------


def test_a_perfect_link_never_fails() -> None:
    assert NetworkProfile(name="p", latency=0.1).next_fault(random.Random(1)) is None


def test_faults_arrive_at_the_summed_rate_in_proportion_to_each_rate() -> None:
    rng = random.Random(42)
    faults = [FAULTY.next_fault(rng) for _ in range(20_000)]
    waits = [fault[0] for fault in faults if fault]
    kinds = Counter(fault[1] for fault in faults if fault)
    assert statistics.fmean(waits) == pytest.approx(3600 / 10, rel=0.03)
    assert kinds["drop"] / len(waits) == pytest.approx(0.6, abs=0.02)
    assert kinds["blackhole"] / len(waits) == pytest.approx(0.3, abs=0.02)
    assert kinds["offline"] / len(waits) == pytest.approx(0.1, abs=0.02)


def test_only_the_enabled_fault_occurs() -> None:
    profile = NetworkProfile(name="p", drops_per_hour=2.0)
    rng = random.Random(3)
    faults = [profile.next_fault(rng) for _ in range(5000)]
    assert {fault[1] for fault in faults if fault} == {"drop"}
    assert statistics.fmean(fault[0] for fault in faults if fault) == pytest.approx(1800, rel=0.05)


def test_drops_are_instant() -> None:
    assert FAULTY.fault_duration("drop", random.Random(1)) == 0.0


def test_blackholes_last_blackhole_mean_on_average() -> None:
    rng = random.Random(5)
    durations = [FAULTY.fault_duration("blackhole", rng) for _ in range(20_000)]
    assert statistics.fmean(durations) == pytest.approx(20.0, rel=0.03)
    # Exponential: the median is ln 2 of the mean.
    assert statistics.median(durations) == pytest.approx(20.0 * math.log(2), rel=0.04)


def test_offline_spells_are_lognormal_with_offline_mean() -> None:
    rng = random.Random(9)
    durations = [FAULTY.fault_duration("offline", rng) for _ in range(50_000)]
    assert statistics.fmean(durations) == pytest.approx(90.0, rel=0.03)
    # Sigma 1 puts the median at exp(-1/2) of the mean: most spells short, a long tail.
    assert statistics.median(durations) == pytest.approx(90.0 * math.exp(-0.5), rel=0.03)


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="meteor"):
        FAULTY.fault_duration("meteor", random.Random(1))  # type: ignore[arg-type]


# --- custom profiles -------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return path


def test_toml_profiles_start_from_a_base_or_from_nothing(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [rural-lte]
        base = "lte"
        latency = 0.08
        drops_per_hour = 2

        [rural-lte-slow]
        base = "rural-lte"
        handshake_delay = 3.0

        [lab]
        latency = 0.001
        """,
    )
    profiles = load_profiles(path)
    assert list(profiles) == ["rural-lte", "rural-lte-slow", "lab"]
    rural = profiles["rural-lte"]
    assert rural.name == "rural-lte"
    assert (rural.latency, rural.drops_per_hour) == (0.08, 2)
    assert rural.jitter == PROFILES["lte"].jitter
    assert rural.blackhole_mean == PROFILES["lte"].blackhole_mean
    slow = profiles["rural-lte-slow"]
    assert (slow.latency, slow.handshake_delay) == (0.08, 3.0)
    assert profiles["lab"] == NetworkProfile(name="lab", latency=0.001)


def test_toml_profiles_can_be_mixed(tmp_path: Path) -> None:
    path = write(tmp_path, '[rural]\nbase = "lte"\nlatency = 0.08\n')
    mix = parse_mix("lte:50,rural:50", {**PROFILES, **load_profiles(path)})
    assert names(mix, range(100)) == {"lte": 50, "rural": 50}


def test_a_scenarios_mix_sees_its_own_the_named_and_the_loaded_profiles() -> None:
    own = {"cellar": NetworkProfile(name="cellar", latency=0.3)}
    loaded = {"lte": NetworkProfile(name="lte", latency=0.5)}  # a file may redefine one
    mix = scenario_mix("cellar:50,lte:25,gprs:25", own, loaded)
    assert names(mix, range(100)) == {"cellar": 50, "lte": 25, "gprs": 25}
    assert {p.name: p.latency for p, _share in mix.entries}["lte"] == 0.5
    with pytest.raises(ValueError, match="unknown network profile 'cellar'"):
        scenario_mix("cellar", {}, loaded)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[x]\nlatncy = 0.1\n", r"unknown key 'latncy'; allowed: base, latency, jitter"),
        ("[x]\nname = 'y'\n", r"unknown key 'name'"),
        ('[x]\nbase = "5g"\n', r"unknown base '5g'; known: wired, lte"),
        ("x = 1\n", r"'x' must be a table"),
        ("[x]\nlatency = -1\n", r"profiles\.toml: x: latency must be finite and >= 0"),
        ("[x]\nlatency = '40ms'\n", r"latency must be a number"),
        ("[x\n", r"Expected"),
    ],
)
def test_bad_toml_profiles_are_explained(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_profiles(write(tmp_path, text))


# --- mixes -----------------------------------------------------------------------------------


def test_whole_percentages_are_exact_over_any_100_indexes() -> None:
    mix = parse_mix("lte:70,3g:25,gprs:5")
    for start in (0, 100, 37, 12_345):
        assert names(mix, range(start, start + 100)) == {"lte": 70, "3g": 25, "gprs": 5}


def test_small_fleets_already_get_a_mix() -> None:
    mix = parse_mix("lte:70,3g:25,gprs:5")
    first_ten = names(mix, range(10))
    assert 6 <= first_ten["lte"] <= 8
    assert 2 <= first_ten["3g"] <= 3
    assert names(mix, range(20))["gprs"] == 1


def test_a_single_profile_takes_every_index() -> None:
    mix = parse_mix("wired")
    assert names(mix, range(250)) == {"wired": 250}
    assert mix.describe() == "wired 100%"


def test_shares_are_normalised() -> None:
    mix = parse_mix("lte:7, 3g:3")
    assert names(mix, range(100)) == {"lte": 70, "3g": 30}
    assert mix.describe() == "lte 70%, 3g 30%"
    assert parse_mix("lte,3g").describe() == "lte 50%, 3g 50%"


def test_describe_lists_profiles_in_spec_order() -> None:
    assert parse_mix("lte:70,3g:25,gprs:5").describe() == "lte 70%, 3g 25%, gprs 5%"


def test_fractional_shares_round_by_largest_remainder() -> None:
    assert names(parse_mix("lte:1,3g:1,gprs:1"), range(100)) == {"lte": 34, "3g": 33, "gprs": 33}
    assert names(parse_mix("lte:49.4,3g:50.6"), range(100)) == {"lte": 49, "3g": 51}


def test_the_same_spec_gives_the_same_assignment() -> None:
    first, second = parse_mix("lte:60,3g:40"), parse_mix("lte:60,3g:40")
    assert [first.profile_for(i) for i in range(100)] == [second.profile_for(i) for i in range(100)]


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown network profile '5g'; known: .*gprs"):
        parse_mix("lte:50,5g:50")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lte:abc", r"share for 'lte' must be a number, got 'abc'"),
        ("lte:", r"share for 'lte' must be a number"),
        ("lte:0", r"share for 'lte' must be a positive number"),
        ("lte:-5,3g:10", r"share for 'lte' must be a positive number"),
        ("lte:nan", r"share for 'lte' must be a positive number"),
        ("lte:inf", r"share for 'lte' must be a positive number"),
        ("", r"empty entry"),
        ("lte:70,,3g:30", r"empty entry"),
        ("lte:50,lte:50", r"twice"),
        ("lte:999,gprs:0.1", r"gprs 0\.01% is below the 1% resolution"),
    ],
)
def test_bad_mixes_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(spec)
