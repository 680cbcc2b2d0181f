"""Chain-of-Causation (CoC) reasoning traces: the decision vocabulary, formatting, meta-actions.

A CoC trace is one imperative sentence that ties the ego's driving decision to its causes:
"Stop for the pedestrian crossing ahead.", "Nudge left to increase clearance from the cones
encroaching into the lane.", "Keep lane and follow the lead vehicle at a safe gap."

Vocabulary (AR1 paper, arXiv 2511.00088, Sec. on the CoC dataset):

- `Longitudinal` (7): set speed, lead follow, speed adaptation, gap search, accelerate to pass, yield,
  stop.
- `Lateral` (8): lane keep, merge/split, out-of-lane nudge, in-lane nudge, lane change, pull over,
  turn, abort. Every lateral decision except lane keep carries a direction, `"left"` or `"right"`: the
  side the ego moves toward (for abort: the side it moves back to).
- `Component` (7): the kinds of critical cause: objects, traffic lights, stop/yield controls, road
  events, lanes, routing, conditions.

`format(trace)` writes a sentence from templates; `ar1_jax.text.coc_parse.parse(text)` reads the
decisions back from any text and never raises. The grammar both sides share:

    sentence   = decisions [" " cause] "."            (suffix frame)
               | cause ", " decisions "."             (prefix frame, cause starts with because/given/...)
    decisions  = clause [" and " clause]              (one lateral and/or one longitudinal clause)
    cause      = LINK phrase                          (LINK: to, for, because of, due to, given, ...)

Meta-actions: `meta_action` maps decisions to the coarse labels that the trajectory side can measure
(longitudinal: accelerate / keep / decelerate / stop; lateral: left / right / straight), and
`compatible_meta_actions` gives every coarse label that does not contradict a decision. A
reasoning-action consistency check is then "the meta-action measured on the trajectory is in the
compatible set of the decisions parsed from the text"; a text that does not parse scores 0.
"""

from __future__ import annotations

import enum
import itertools
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator

__all__ = [
    "Longitudinal", "Lateral", "Component", "LONGITUDINAL", "LATERAL", "COMPONENTS", "DIRECTIONS",
    "DIRECTIONAL_LATERAL", "Trace", "format", "NUM_VARIANTS", "CAUSE_LINKS", "LongitudinalMeta", "LateralMeta",
    "MetaAction", "meta_action", "compatible_meta_actions", "decision_combinations", "WORD_OR_MARK", "normalise",
]


class Longitudinal(str, enum.Enum):
    """The 7 longitudinal (speed) decisions."""

    SET_SPEED = "set_speed"
    LEAD_FOLLOW = "lead_follow"
    SPEED_ADAPTATION = "speed_adaptation"
    GAP_SEARCH = "gap_search"
    ACCELERATE_TO_PASS = "accelerate_to_pass"
    YIELD = "yield"
    STOP = "stop"


class Lateral(str, enum.Enum):
    """The 8 lateral (path) decisions."""

    LANE_KEEP = "lane_keep"
    MERGE_SPLIT = "merge_split"
    OUT_OF_LANE_NUDGE = "out_of_lane_nudge"
    IN_LANE_NUDGE = "in_lane_nudge"
    LANE_CHANGE = "lane_change"
    PULL_OVER = "pull_over"
    TURN = "turn"
    ABORT = "abort"


class Component(str, enum.Enum):
    """The 7 kinds of critical component a trace names as a cause."""

    OBJECTS = "objects"
    TRAFFIC_LIGHTS = "traffic_lights"
    STOP_YIELD_CONTROLS = "stop_yield_controls"
    ROAD_EVENTS = "road_events"
    LANES = "lanes"
    ROUTING = "routing"
    CONDITIONS = "conditions"


LONGITUDINAL: tuple[Longitudinal, ...] = tuple(Longitudinal)
LATERAL: tuple[Lateral, ...] = tuple(Lateral)
COMPONENTS: tuple[Component, ...] = tuple(Component)
DIRECTIONS: tuple[str, str] = ("left", "right")
#: Lateral decisions that need a direction (all but lane keep).
DIRECTIONAL_LATERAL: frozenset[Lateral] = frozenset(set(Lateral) - {Lateral.LANE_KEEP})

#: Words that start a cause. A `Trace.cause` must begin with one of these (multi-word ones as written).
CAUSE_LINKS: tuple[str, ...] = (
    "to", "for", "because", "due to", "since", "as", "given", "so that", "at", "behind", "from", "with",
    "until", "when", "after", "before", "near", "around", "past", "toward", "towards", "into", "onto",
    "via", "which", "that", "where", "if", "once", "considering", "owing to", "amid", "thanks to",
    "in response to", "in order to", "in front of", "ahead of",
)
# Causes starting with these read naturally before the decisions ("Because of the rain, slow down.").
_FRONTABLE_LINKS = ("because", "since", "as", "given", "due to", "with", "after", "when", "once",
                    "considering", "owing to", "thanks to", "in response to")


# ----------------------------------------------------------------------------------------------------
# Phrase tables: three phrasings per decision ({dir} is the direction). Every phrasing must be matched
# in full by one of its decision's patterns in `ar1_jax.text.coc_parse` (tested).

_LON_PHRASES: dict[Longitudinal, tuple[str, str, str]] = {
    Longitudinal.SET_SPEED: ("maintain the set speed", "cruise at the set speed", "keep the desired speed"),
    Longitudinal.LEAD_FOLLOW: ("follow the lead vehicle at a safe gap", "keep a safe distance behind the lead vehicle",
                               "follow the lead vehicle"),
    Longitudinal.SPEED_ADAPTATION: ("slow down", "reduce speed", "adapt the speed"),
    Longitudinal.GAP_SEARCH: ("look for a safe gap", "search for a gap", "wait for a gap"),
    Longitudinal.ACCELERATE_TO_PASS: ("accelerate to pass", "speed up to overtake", "accelerate to overtake"),
    Longitudinal.YIELD: ("yield", "give way", "yield the right of way"),
    Longitudinal.STOP: ("stop", "come to a stop", "come to a complete stop"),
}

_LAT_PHRASES: dict[Lateral, tuple[str, str, str]] = {
    Lateral.LANE_KEEP: ("keep lane", "stay in the current lane", "keep the lane"),
    Lateral.MERGE_SPLIT: ("merge {dir}", "merge into the {dir} lane", "take the {dir} fork"),
    Lateral.OUT_OF_LANE_NUDGE: ("nudge {dir} out of the lane", "nudge {dir} into the adjacent lane",
                                "make an out-of-lane nudge to the {dir}"),
    Lateral.IN_LANE_NUDGE: ("nudge {dir} within the lane", "nudge {dir}", "shift {dir} within the lane"),
    Lateral.LANE_CHANGE: ("change lanes to the {dir}", "change to the {dir} lane", "make a lane change to the {dir}"),
    Lateral.PULL_OVER: ("pull over to the {dir}", "pull over on the {dir} side", "pull over to the {dir} shoulder"),
    Lateral.TURN: ("turn {dir}", "make a {dir} turn", "take the {dir} turn"),
    Lateral.ABORT: ("abort the lane change and move back to the {dir}",
                    "abort the maneuver and steer back to the {dir}",
                    "abort the lane change and return to the {dir}"),
}

# Default cause phrases per component (used when a trace has components but no `cause`); each is
# recognised by `parse` as exactly its component.
_COMPONENT_PHRASES: dict[Component, tuple[str, str, str]] = {
    Component.OBJECTS: ("the vehicle ahead", "the pedestrian crossing ahead", "the cones in the road"),
    Component.TRAFFIC_LIGHTS: ("the red traffic light", "the traffic signal", "the signal ahead"),
    Component.STOP_YIELD_CONTROLS: ("the stop sign", "the yield sign", "the stop line"),
    Component.ROAD_EVENTS: ("the construction zone ahead", "the road work ahead", "the accident ahead"),
    Component.LANES: ("the lane ending ahead", "the faded lane markings", "the narrowing lane"),
    Component.ROUTING: ("the planned route", "the navigation route", "the upcoming exit"),
    Component.CONDITIONS: ("the wet road surface", "the low visibility", "the heavy rain"),
}

# Sentence frames: (link for a generated cause, cause placed first?).
_FRAMES: tuple[tuple[str, bool], ...] = (
    ("for", False), ("because of", False), ("due to", False), ("in response to", False),
    ("because of", True), ("given", True),
)
_NUM_PHRASINGS = 3
#: Number of paraphrase variants `format` can produce (frames x phrasings).
NUM_VARIANTS = len(_FRAMES) * _NUM_PHRASINGS

#: Words and sentence marks of a normalised text (`normalise`): what both `format` and the parser read.
WORD_OR_MARK = re.compile(r"[a-z0-9]+|[.!?;\n,]")


def normalise(text: str) -> str:
    """NFKC-normalised, case-folded text (the form `WORD_OR_MARK` splits)."""
    return unicodedata.normalize("NFKC", text).casefold()


# ----------------------------------------------------------------------------------------------------
# Trace and format.


@dataclass(frozen=True)
class Trace:
    """One CoC reasoning trace: the decisions, their direction, and their causes.

    Attributes:
      longitudinal: the speed decision, or None when the trace makes none.
      lateral: the path decision, or None. At least one of the two must be set.
      direction: "left" / "right" for every lateral decision except lane keep (the side the ego moves
        toward; for abort, the side it moves back to); None for lane keep or no lateral decision.
      components: the kinds of critical cause, distinct, in any order.
      cause: the causal phrase, starting with a link word from `CAUSE_LINKS` ("to yield to the
        pedestrian crossing ahead", "because the light turned red"), one clause: no . ! ? ; , or
        newline, and no "then" or "so" (other than "so that"). None: `format` writes a cause from
        `components` (or no cause when there are none).
      text: a verbatim sentence (an annotation). When set, `format` returns it unchanged; it must
        parse to this trace's decisions and direction (checked here).
    Strings are accepted for the enums (`Trace("stop", None)`).
    """

    longitudinal: Longitudinal | None
    lateral: Lateral | None
    components: tuple[Component, ...] = ()
    direction: str | None = None
    cause: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        lon = None if self.longitudinal is None else _as_enum(Longitudinal, self.longitudinal, "longitudinal")
        lat = None if self.lateral is None else _as_enum(Lateral, self.lateral, "lateral")
        object.__setattr__(self, "longitudinal", lon)
        object.__setattr__(self, "lateral", lat)
        if lon is None and lat is None:
            raise ValueError("Trace: at least one of `longitudinal` and `lateral` must be set")
        comps = tuple(_as_enum(Component, c, "components") for c in self.components)
        if len(set(comps)) != len(comps):
            raise ValueError(f"Trace.components: duplicates in {[c.value for c in comps]}")
        object.__setattr__(self, "components", comps)
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"Trace.direction: expected 'left', 'right' or None, got {self.direction!r}")
        if lat in DIRECTIONAL_LATERAL and self.direction is None:
            raise ValueError(f"Trace.direction: lateral decision {lat.value!r} needs 'left' or 'right'")
        if lat not in DIRECTIONAL_LATERAL and self.direction is not None:
            what = "lane keep" if lat is Lateral.LANE_KEEP else "no lateral decision"
            raise ValueError(f"Trace.direction: must be None with {what}, got {self.direction!r}")
        if self.cause is not None:
            _check_cause(self.cause)
        if self.text is not None:
            from ar1_jax.text.coc_parse import parse  # the parser reads this module's vocabulary

            got = parse(self.text)
            want = (lon, lat, self.direction)
            if (got.longitudinal, got.lateral, got.direction) != want:
                raise ValueError(
                    f"Trace.text {self.text!r} parses to longitudinal={_v(got.longitudinal)}, "
                    f"lateral={_v(got.lateral)}, "
                    f"direction={got.direction}, not the trace's {_v(lon)}, {_v(lat)}, {self.direction}")

    def meta_action(self) -> "MetaAction":
        """The coarse meta-action of this trace's decisions (see `meta_action`)."""
        return meta_action(self.longitudinal, self.lateral, self.direction)


def _v(x: enum.Enum | None) -> str | None:
    return None if x is None else x.value


def _as_enum(cls: type[enum.Enum], value: object, name: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"Trace.{name}: {value!r} is not one of {[m.value for m in cls]}") from None


def _check_cause(cause: str) -> None:
    if not isinstance(cause, str) or not cause.strip():
        raise ValueError(f"Trace.cause: expected a non-empty string, got {cause!r}")
    bad = sorted(set(cause) & set(".!?;,\n\r"))
    if bad:
        raise ValueError(f"Trace.cause: must be one clause without {''.join(bad)!r}: {cause!r}")
    words = WORD_OR_MARK.findall(normalise(cause))
    low = " ".join(words)
    if not any(low == link or low.startswith(link + " ") for link in CAUSE_LINKS):
        raise ValueError(f"Trace.cause: must start with a link word ({', '.join(CAUSE_LINKS)}), got {cause!r}")
    for k, w in enumerate(words):
        if w == "then" or (w == "so" and words[k + 1: k + 2] != ["that"]):
            raise ValueError(f"Trace.cause: must be one clause; {w!r} starts a new one: {cause!r}")


def format(trace: Trace, variant: int | None = None, *, seed: int | None = None) -> str:  # noqa: A001
    """One sentence for `trace`.

    `variant` in [0, NUM_VARIANTS) picks the sentence frame (cause after or before the decisions,
    the link word of a generated cause), the phrasing of each decision and cause, and the order of
    the lateral and longitudinal clauses; `seed` picks a variant at random (deterministically per
    seed); neither: variant 0. A trace with `text` formats to that text. Every variant parses back to
    the trace's decisions and direction, and, when the cause is generated, to its components.
    """
    if variant is not None and seed is not None:
        raise ValueError("format: give `variant` or `seed`, not both")
    if seed is not None:
        variant = random.Random(seed).randrange(NUM_VARIANTS)
    variant = 0 if variant is None else int(variant)
    if not 0 <= variant < NUM_VARIANTS:
        raise ValueError(f"format: variant must be in [0, {NUM_VARIANTS}), got {variant}")
    if trace.text is not None:
        return trace.text
    frame_link, cause_first = _FRAMES[variant % len(_FRAMES)]
    phrasing = variant // len(_FRAMES)
    clauses = []
    if trace.lateral is not None:
        clauses.append(_LAT_PHRASES[trace.lateral][phrasing].format(dir=trace.direction))
    if trace.longitudinal is not None:
        clauses.append(_LON_PHRASES[trace.longitudinal][phrasing])
    if (variant + phrasing) % 2:
        clauses.reverse()
    decisions = " and ".join(clauses)
    if trace.cause is not None:
        cause = trace.cause.strip()
        norm = " ".join(WORD_OR_MARK.findall(normalise(cause)))
        frontable = any(norm == link or norm.startswith(link + " ") for link in _FRONTABLE_LINKS)
        cause_first = cause_first and frontable
    elif trace.components:
        names = [_COMPONENT_PHRASES[c][(phrasing + i) % _NUM_PHRASINGS] for i, c in enumerate(trace.components)]
        cause = f"{frame_link} {' and '.join(names)}"
    else:
        return _capitalise(decisions) + "."
    if cause_first:
        return f"{_capitalise(cause)}, {decisions}."
    return f"{_capitalise(decisions)} {cause}."


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def decision_combinations() -> Iterator[tuple[Longitudinal | None, Lateral | None, str | None]]:
    """Every valid (longitudinal, lateral, direction) of the vocabulary: 8 x 16 - 1 = 127."""
    lats: list[tuple[Lateral | None, str | None]] = [(None, None), (Lateral.LANE_KEEP, None)]
    lats += [(lat, d) for lat in LATERAL if lat in DIRECTIONAL_LATERAL for d in DIRECTIONS]
    for lon, (lat, d) in itertools.product((None, *LONGITUDINAL), lats):
        if lon is None and lat is None:
            continue
        yield lon, lat, d


# ----------------------------------------------------------------------------------------------------
# Meta-actions.


class LongitudinalMeta(str, enum.Enum):
    """Coarse longitudinal behaviour measurable on a trajectory."""

    ACCELERATE = "accelerate"
    KEEP = "keep"
    DECELERATE = "decelerate"
    STOP = "stop"


class LateralMeta(str, enum.Enum):
    """Coarse lateral behaviour measurable on a trajectory."""

    LEFT = "left"
    RIGHT = "right"
    STRAIGHT = "straight"


@dataclass(frozen=True)
class MetaAction:
    """A coarse meta-action; None on an axis means the decisions say nothing about it."""

    longitudinal: LongitudinalMeta | None
    lateral: LateralMeta | None


# Primary meta-action and the compatible set per longitudinal decision.
#   set speed          -> keep        (or accelerate, toward the set speed)
#   lead follow        -> keep        (speed tracks the lead: accelerate/keep/decelerate all fit; not stop)
#   speed adaptation   -> decelerate  (or keep: adapting to a curve, bump, zone, weather)
#   gap search         -> keep        (adjusting speed to find a gap: accelerate/keep/decelerate)
#   accelerate to pass -> accelerate
#   yield              -> decelerate  (or stop)
#   stop               -> stop        (or decelerate: the stop may complete after the horizon)
_LON_META: dict[Longitudinal, tuple[LongitudinalMeta, frozenset[LongitudinalMeta]]] = {
    Longitudinal.SET_SPEED: (LongitudinalMeta.KEEP, frozenset({LongitudinalMeta.KEEP, LongitudinalMeta.ACCELERATE})),
    Longitudinal.LEAD_FOLLOW: (LongitudinalMeta.KEEP, frozenset({LongitudinalMeta.KEEP, LongitudinalMeta.ACCELERATE,
                                                                 LongitudinalMeta.DECELERATE})),
    Longitudinal.SPEED_ADAPTATION: (LongitudinalMeta.DECELERATE,
                                    frozenset({LongitudinalMeta.DECELERATE, LongitudinalMeta.KEEP})),
    Longitudinal.GAP_SEARCH: (LongitudinalMeta.KEEP, frozenset({LongitudinalMeta.KEEP, LongitudinalMeta.ACCELERATE,
                                                                LongitudinalMeta.DECELERATE})),
    Longitudinal.ACCELERATE_TO_PASS: (LongitudinalMeta.ACCELERATE, frozenset({LongitudinalMeta.ACCELERATE})),
    Longitudinal.YIELD: (LongitudinalMeta.DECELERATE, frozenset({LongitudinalMeta.DECELERATE, LongitudinalMeta.STOP})),
    Longitudinal.STOP: (LongitudinalMeta.STOP, frozenset({LongitudinalMeta.STOP, LongitudinalMeta.DECELERATE})),
}
# Lateral decisions whose motion can be too small to show as left/right on a trajectory.
_LAT_MAY_LOOK_STRAIGHT = frozenset({Lateral.IN_LANE_NUDGE, Lateral.ABORT})


def meta_action(longitudinal: Longitudinal | str | None, lateral: Lateral | str | None = None,
                direction: str | None = None) -> MetaAction:
    """The primary coarse meta-action of a decision pair.

    Longitudinal: set speed, lead follow, gap search -> keep; speed adaptation, yield -> decelerate;
    accelerate to pass -> accelerate; stop -> stop; None -> None.
    Lateral: lane keep -> straight; any other decision -> its direction (left / right), or None when
    the direction is not known; no lateral decision -> None.
    """
    lon = None if longitudinal is None else Longitudinal(longitudinal)
    lat = None if lateral is None else Lateral(lateral)
    lon_meta = None if lon is None else _LON_META[lon][0]
    if lat is None:
        lat_meta = None
    elif lat is Lateral.LANE_KEEP:
        lat_meta = LateralMeta.STRAIGHT
    else:
        lat_meta = None if direction is None else LateralMeta(direction)
    return MetaAction(lon_meta, lat_meta)


def compatible_meta_actions(longitudinal: Longitudinal | str | None, lateral: Lateral | str | None = None,
                            direction: str | None = None
                            ) -> tuple[frozenset[LongitudinalMeta], frozenset[LateralMeta]]:
    """Every coarse meta-action (longitudinal set, lateral set) that does not contradict the decisions.

    Longitudinal sets are listed at `_LON_META` (e.g. stop -> {stop, decelerate}); no decision -> all
    four. Lateral: lane keep -> {straight}; a directional decision -> {its direction} ({left, right}
    when the direction is unknown), plus straight for in-lane nudge and abort, whose motion may be too
    small to measure; no decision -> all three.
    """
    lon = None if longitudinal is None else Longitudinal(longitudinal)
    lat = None if lateral is None else Lateral(lateral)
    lon_set = frozenset(LongitudinalMeta) if lon is None else _LON_META[lon][1]
    if lat is None:
        lat_set = frozenset(LateralMeta)
    elif lat is Lateral.LANE_KEEP:
        lat_set = frozenset({LateralMeta.STRAIGHT})
    else:
        sides = {LateralMeta(direction)} if direction is not None else {LateralMeta.LEFT, LateralMeta.RIGHT}
        if lat in _LAT_MAY_LOOK_STRAIGHT:
            sides.add(LateralMeta.STRAIGHT)
        lat_set = frozenset(sides)
    return lon_set, lat_set
