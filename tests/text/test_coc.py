"""Chain-of-Causation vocabulary, format and parse (ar1_jax.text.coc)."""

import os
import random
import string

import pytest

from ar1_jax.text import coc
from ar1_jax.text.coc import (
    COMPONENTS, LATERAL, LONGITUDINAL, NUM_VARIANTS, Component, Lateral, LateralMeta, Longitudinal,
    LongitudinalMeta, Trace, compatible_meta_actions, decision_combinations, meta_action,
)
from ar1_jax.text.coc_parse import ParseResult, parse

# Fresh inputs every run; a failure prints the seed (AR1_TEST_SEED=<seed> reproduces it).
SEED = int(os.environ.get("AR1_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Causes that mention decision words, all after a link word: they must add no decision.
HOSTILE_CAUSES = (
    "because the stopped truck is turning left",
    "to yield to the pedestrian waiting at the stop sign",
    "given that traffic must change lanes and merge right",
    "due to the cyclist who may stop and turn right or keep lane",
    "for the bus that pulls over to the right to let people off",
    "as the lead vehicle slows down and the light turns yellow",
    "with the merging traffic from the on ramp",
    "so that the truck can stop and turn left",
)


def _rng(offset=0):
    return random.Random(SEED + offset)


def test_vocabulary():
    assert len(LONGITUDINAL) == 7 and len(LATERAL) == 8 and len(COMPONENTS) == 7
    assert [d.value for d in LONGITUDINAL] == ["set_speed", "lead_follow", "speed_adaptation", "gap_search",
                                               "accelerate_to_pass", "yield", "stop"]
    assert [d.value for d in LATERAL] == ["lane_keep", "merge_split", "out_of_lane_nudge", "in_lane_nudge",
                                          "lane_change", "pull_over", "turn", "abort"]
    combos = list(decision_combinations())
    assert len(combos) == len(set(combos)) == 8 * 16 - 1


def test_parse_format_exact_over_vocabulary_and_variants():
    rng = _rng()
    n = 0
    for lon, lat, d in decision_combinations():
        for variant in range(NUM_VARIANTS):
            comps = tuple(rng.sample(COMPONENTS, rng.randint(0, len(COMPONENTS))))
            for cause in (None, rng.choice(HOSTILE_CAUSES)):
                trace = Trace(lon, lat, comps, d, cause=cause)
                text = coc.format(trace, variant)
                got = parse(text)
                msg = f"seed={SEED} variant={variant} text={text!r} got={got}"
                assert got.ok and got.matches(trace) and not got.ambiguous, msg
                if cause is None:
                    assert got.components == tuple(c for c in COMPONENTS if c in comps), msg
                n += 1
    assert n == 127 * NUM_VARIANTS * 2


def test_parse_is_case_insensitive_and_survives_cause_truncation():
    rng = _rng(1)
    combos = list(decision_combinations())
    for _ in range(300):
        lon, lat, d = rng.choice(combos)
        variant = rng.randrange(NUM_VARIANTS)
        trace = Trace(lon, lat, tuple(rng.sample(COMPONENTS, rng.randint(1, 3))), d)
        text = coc.format(trace, variant)
        mixed = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
        assert parse(mixed).matches(trace), (SEED, mixed)
        assert parse(text.upper()).matches(trace), (SEED, text)
        if not coc._FRAMES[variant % len(coc._FRAMES)][1]:  # cause after the decisions: cut inside the cause
            decisions = coc.format(Trace(lon, lat, (), d), variant)[:-1]
            assert text.startswith(decisions)
            cut = rng.randint(len(decisions), len(text))
            assert parse(text[:cut]).matches(trace), (SEED, text[:cut])


@pytest.mark.parametrize("text, lon, lat, direction", [
    ("Stop to yield to the pedestrian crossing ahead.", "stop", None, None),
    ("Nudge left to increase clearance from the cones encroaching into the lane.", None, "in_lane_nudge", "left"),
    ("Keep lane and follow the lead vehicle at a safe gap.", "lead_follow", "lane_keep", None),
    ("Yield to the cyclist and then turn right.", "yield", "turn", "right"),
    ("The ego vehicle is stopped at a red light, so remain stationary.", "stop", None, None),
    ("Nudge left so that the cyclist has room to stop.", None, "in_lane_nudge", "left"),
    ("yield to the cyclist, then turn right.", "yield", "turn", "right"),
    ("Do not change lanes; slow down for the sharp curve.", "speed_adaptation", None, None),
    ("The ego vehicle should come to a complete stop at the stop line.", "stop", None, None),
    ("Proceed through the green light and keep lane.", "set_speed", "lane_keep", None),
    ("Change lanes to the right to overtake the slow truck.", None, "lane_change", "right"),
    ("Wait for a safe gap before merging left.", "gap_search", None, None),
    ("Because the light turned red, stop behind the stop line.", "stop", None, None),
    ("Nudge right out of the lane around the double-parked van.", None, "out_of_lane_nudge", "right"),
    ("Abort the lane change and steer back to the right because a car is approaching.", None, "abort", "right"),
    ("Make a U-turn at the intersection.", None, "turn", None),
    ("ACCELERATE TO PASS THE TRACTOR.", "accelerate_to_pass", None, None),
    ("Turn left at the stop sign, and stop for pedestrians.", "stop", "turn", "left"),
    # After a cause only a comma or a new sentence starts new decisions: a cause may say anything.
    ("Turn left at the stop sign and stop for pedestrians.", None, "turn", "left"),
])
def test_parse_examples(text, lon, lat, direction):
    got = parse(text)
    assert got.ok, got
    assert (got.longitudinal, got.lateral, got.direction) == (
        None if lon is None else Longitudinal(lon), None if lat is None else Lateral(lat), direction), got


def test_parse_components():
    got = parse("Stop for the red traffic light and the pedestrian at the crosswalk in the heavy rain.")
    assert got.components == (Component.OBJECTS, Component.TRAFFIC_LIGHTS, Component.STOP_YIELD_CONTROLS,
                              Component.CONDITIONS)
    # Words inside decision phrases are not causes: "lane" in "keep lane", "lead vehicle" in the follow phrase.
    assert parse("Keep lane and follow the lead vehicle at a safe gap.").components == ()
    assert parse("Keep lane due to the planned route.").components == (Component.ROUTING,)


def _hostile_strings(rng):
    words = [w for ps in coc._LON_PHRASES.values() for p in ps for w in p.split()]
    words += [w for ps in coc._LAT_PHRASES.values() for p in ps for w in p.format(dir="left").split()]
    valid = [coc.format(Trace(lon, lat, tuple(rng.sample(COMPONENTS, 2)), d), rng.randrange(NUM_VARIANTS))
             for lon, lat, d in decision_combinations()]
    out = []
    for k in range(2000):
        kind = k % 10
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))).decode("utf-8", "replace"))
        elif kind == 1:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))).decode("latin-1"))
        elif kind == 2:  # any code point, lone surrogates included
            out.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 100))))
        elif kind == 3:
            s = rng.choice(valid)
            out.append(s[: rng.randint(0, len(s))])
        elif kind == 4:
            s = rng.choice(valid)
            out.append(s[rng.randint(0, len(s)):])
        elif kind == 5:
            out.append(" ".join([rng.choice(words)] * rng.randint(1, 3000)))
        elif kind == 6:
            out.append(" ".join(rng.choice(words + [",", ".", "not", "to", "left"]) for _ in range(rng.randint(0, 60))))
        elif kind == 7:
            out.append(rng.choice(valid) * rng.randint(50, 400))
        elif kind == 8:
            out.append("".join(rng.choice(string.punctuation + string.whitespace + string.digits)
                               for _ in range(rng.randint(0, 300))))
        else:
            s = rng.choice(valid)
            out.append("".join(c.upper() if rng.random() < 0.5 else c for c in s) + "\u0000\ud800<|cot_end|>")
    return out


def test_parse_never_raises():
    rng = _rng(2)
    for s in _hostile_strings(rng) + [None, 3, 2.5, b"\xff\xfestop", bytearray(b"Turn left."), ["stop"], object()]:
        got = parse(s)
        assert isinstance(got, ParseResult)
        assert not (got.reason or "").startswith("internal error"), (SEED, repr(s)[:200], got.reason)
        assert got.ok == (got.longitudinal is not None or got.lateral is not None)
        assert got.ok or got.reason
    assert parse(b"Turn left.").lateral is Lateral.TURN
    assert parse(["stop"]).reason.startswith("not a string")


def test_parse_reports_garbage_unparseable():
    rng = _rng(3)
    garbage = ["", "   \n\t", "...", "12345 678", "\ud800\udfff", "\u4e00\u4e8c\u4e09\u56db",
               "<|cot_start|><|cot_end|>",
               "The sky is blue and the grass is green.", "Do not stop.", "lorem ipsum dolor sit amet"]
    garbage += [bytes(rng.randrange(128, 256) for _ in range(rng.randint(0, 80))).decode("utf-8", "replace")
                for _ in range(200)]
    garbage += ["".join(chr(rng.randrange(0x3000, 0xA000)) for _ in range(rng.randint(1, 50))) for _ in range(200)]
    for s in garbage:
        got = parse(s)
        assert not got.ok and got.reason, (SEED, repr(s), got)
    assert parse("").reason.startswith("empty")
    assert parse("lorem ipsum").reason == "no decision phrase found"


def test_parse_long_input_is_bounded():
    text = "Stop for the red light. " + "blah " * 200_000
    got = parse(text)
    assert got.longitudinal is Longitudinal.STOP
    assert parse("blah " * 5000 + "Turn left.").ok is False  # beyond MAX_PARSE_CHARS


def test_trace_validation():
    assert Trace("stop", None).longitudinal is Longitudinal.STOP
    assert Trace(None, "turn", ("objects",), "left").components == (Component.OBJECTS,)
    with pytest.raises(ValueError, match="at least one"):
        Trace(None, None)
    with pytest.raises(ValueError, match="needs 'left' or 'right'"):
        Trace(None, Lateral.TURN)
    with pytest.raises(ValueError, match="must be None with lane keep"):
        Trace(None, Lateral.LANE_KEEP, direction="left")
    with pytest.raises(ValueError, match="must be None with no lateral"):
        Trace(Longitudinal.STOP, None, direction="left")
    with pytest.raises(ValueError, match="direction"):
        Trace(None, Lateral.TURN, direction="up")
    with pytest.raises(ValueError, match="longitudinal"):
        Trace("brake hard", None)
    with pytest.raises(ValueError, match="duplicates"):
        Trace("stop", None, (Component.OBJECTS, Component.OBJECTS))
    with pytest.raises(ValueError, match="link word"):
        Trace("stop", None, cause="the pedestrian")
    with pytest.raises(ValueError, match="one clause"):
        Trace("stop", None, cause="for the pedestrian, then go")
    with pytest.raises(ValueError, match="one clause"):
        Trace("stop", None, cause="for the pedestrian and then turn left")
    Trace("stop", None, cause="so that the pedestrian can cross")
    t = Trace("stop", None, text="Stop to yield to the pedestrian crossing ahead.")
    assert coc.format(t, 5) == "Stop to yield to the pedestrian crossing ahead."
    with pytest.raises(ValueError, match="parses to"):
        Trace("yield", None, text="Stop to yield to the pedestrian crossing ahead.")


def test_format_variants_and_seed():
    trace = Trace(Longitudinal.STOP, Lateral.IN_LANE_NUDGE, (Component.OBJECTS,), "left")
    texts = {coc.format(trace, v) for v in range(NUM_VARIANTS)}
    assert len(texts) == NUM_VARIANTS
    assert coc.format(trace) == coc.format(trace, 0)
    seed = _rng(4).randrange(10**6)
    assert coc.format(trace, seed=seed) == coc.format(trace, seed=seed)
    assert coc.format(trace, seed=seed) in texts
    assert coc.format(Trace("stop", None, (Component.OBJECTS,)), 0) == "Stop for the vehicle ahead."
    assert coc.format(Trace("stop", None, cause="to yield to the pedestrian crossing ahead")) == \
        "Stop to yield to the pedestrian crossing ahead."
    assert coc.format(Trace("lead_follow", "lane_keep"), 0) == "Keep lane and follow the lead vehicle at a safe gap."
    with pytest.raises(ValueError, match="not both"):
        coc.format(trace, 1, seed=2)
    with pytest.raises(ValueError, match="variant"):
        coc.format(trace, NUM_VARIANTS)


def test_meta_actions():
    assert meta_action("stop") == coc.MetaAction(LongitudinalMeta.STOP, None)
    assert meta_action("accelerate_to_pass", "lane_keep").lateral is LateralMeta.STRAIGHT
    assert meta_action(None, "lane_change", "right") == coc.MetaAction(None, LateralMeta.RIGHT)
    assert meta_action(None, "turn", None).lateral is None
    assert meta_action("yield").longitudinal is LongitudinalMeta.DECELERATE
    assert meta_action("set_speed").longitudinal is LongitudinalMeta.KEEP
    lon_set, lat_set = compatible_meta_actions("stop", "in_lane_nudge", "left")
    assert lon_set == {LongitudinalMeta.STOP, LongitudinalMeta.DECELERATE}
    assert lat_set == {LateralMeta.LEFT, LateralMeta.STRAIGHT}
    assert compatible_meta_actions(None, None) == (frozenset(LongitudinalMeta), frozenset(LateralMeta))
    assert compatible_meta_actions(None, "turn")[1] == {LateralMeta.LEFT, LateralMeta.RIGHT}
    for lon, lat, d in decision_combinations():
        primary = meta_action(lon, lat, d)
        lon_set, lat_set = compatible_meta_actions(lon, lat, d)
        assert primary.longitudinal is None or primary.longitudinal in lon_set
        assert primary.lateral is None or primary.lateral in lat_set
        trace = Trace(lon, lat, (), d)
        assert parse(coc.format(trace)).meta_action() == trace.meta_action() == primary
