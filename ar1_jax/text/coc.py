"""Chain-of-Causation (CoC) reasoning traces: the decision vocabulary, formatting and parsing.

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

`format(trace)` writes a sentence from templates; `parse(text)` reads the decisions back from any
text and never raises. The grammar both sides share:

    sentence   = decisions [" " cause] "."            (suffix frame)
               | cause ", " decisions "."             (prefix frame, cause starts with because/given/...)
    decisions  = clause [" and " clause]              (one lateral and/or one longitudinal clause)
    cause      = LINK phrase                          (LINK: to, for, because of, due to, given, ...)

The parser scans each sentence left to right: at every word it tries the decision phrases (longest
match wins; phrases such as "stop sign" or "turn lane" are recognised and ignored), reads a direction
after a lateral phrase ("to the left"), skips negated phrases ("do not change lanes"), and stops at
the first LINK word: what follows is the cause, so "Stop to yield to the pedestrian" is a stop, and a
cause that mentions "the stop sign" or "the turning truck" adds no decision. Scanning resumes after
a comma, at "then" or "so" (not "so that"), or at the next sentence. The first decision found on each
axis is the answer; `ambiguous` says when more than one distinct decision was found on an axis.
Components are the critical-cause keywords found outside decision phrases ("lane" in "keep lane"
does not count as a lanes cause).

Meta-actions: `meta_action` maps decisions to the coarse labels that the trajectory side can measure
(longitudinal: accelerate / keep / decelerate / stop; lateral: left / right / straight), and
`compatible_meta_actions` gives every coarse label that does not contradict a decision. A
reasoning-action consistency check is then "the meta-action measured on the trajectory is in the
compatible set of the decisions parsed from the text"; a text that does not parse scores 0.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator

__all__ = [
    "Longitudinal", "Lateral", "Component", "LONGITUDINAL", "LATERAL", "COMPONENTS", "DIRECTIONS",
    "DIRECTIONAL_LATERAL", "Trace", "ParseResult", "format", "parse", "NUM_VARIANTS", "CAUSE_LINKS",
    "LongitudinalMeta", "LateralMeta", "MetaAction", "meta_action", "compatible_meta_actions",
    "decision_combinations", "MAX_PARSE_CHARS",
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
# Single words that end the decision part of a clause while parsing.
_LINK_WORDS = frozenset(w for w in CAUSE_LINKS if " " not in w) | {"due", "owing", "thanks"}
# Words that start a new clause (like a comma): "..., so stop", "... and then turn left". "so that" is a link.
_CLAUSE_WORDS = frozenset({"then", "so"})
# Causes starting with these read naturally before the decisions ("Because of the rain, slow down.").
_FRONTABLE_LINKS = ("because", "since", "as", "given", "due to", "with", "after", "when", "once",
                    "considering", "owing to", "thanks to", "in response to")
_NEGATORS = frozenset({"not", "no", "never", "without", "avoid", "avoiding", "dont", "t", "cannot", "nor",
                       "instead", "refrain", "rather"})
#: Characters beyond this many are ignored by `parse` (a trace is ~40 tokens).
MAX_PARSE_CHARS = 8192


# ----------------------------------------------------------------------------------------------------
# Phrase tables. Format side: three phrasings per decision ({dir} is the direction). Parse side:
# regular expressions over the normalised word string (lower-case words separated by single spaces);
# every format phrasing must be matched in full by one of its decision's patterns (tested).

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

_DIR = r"(?P<dir>left|right)"
_LANE = r"(?:the |its |our |my )?(?:current |same |own |ego |original )?lane"

_LON_PATTERNS: dict[Longitudinal, tuple[str, ...]] = {
    Longitudinal.SET_SPEED: (
        r"(?:maintain|maintains|maintaining|keep|keeps|keeping|hold|holding|resume|resuming|cruise|cruising|drive|"
        r"driving|continue|continuing|proceed|proceeding|return|returning|accelerate|accelerating|speed up|"
        r"speeding up)(?: at| to| with)? (?:the |a |its |our )?(?:set|desired|target|cruising|cruise|current|posted|"
        r"same|constant|steady|normal|free flow) speed(?: limit)?",
        r"(?:maintain|maintains|maintaining|keep|keeping|hold|holding) (?:the |its |our )?speed",
        r"set speed(?: keeping| control)?",
        r"cruise|cruising|cruises",
        r"accelerate|accelerates|accelerating|speed up|speeds up|speeding up",
        r"proceed|proceeds|proceeding",
    ),
    Longitudinal.LEAD_FOLLOW: (
        r"(?:follow|follows|following) (?:the |a )?(?:lead|leading|preceding|front) (?:vehicle|car|truck|bus|van)"
        r"(?: ahead| in front)?(?: at a safe (?:gap|distance|following distance))?",
        r"(?:follow|follows|following) (?:the |a )?(?:vehicle|car|truck|bus|van|traffic) (?:ahead|in front)"
        r"(?: at a safe (?:gap|distance|following distance))?",
        r"(?:keep|keeps|keeping|maintain|maintains|maintaining) (?:a |the )?(?:safe )?(?:following )?"
        r"(?:gap|distance|headway)(?: behind (?:the |a )?(?:lead|leading|preceding|front) "
        r"(?:vehicle|car|truck|bus|van))?",
        r"lead (?:vehicle )?follow(?:ing)?",
        r"car follow(?:ing)?",
        r"follow|follows|following",
    ),
    Longitudinal.SPEED_ADAPTATION: (
        r"(?:slow|slows|slowing) down",
        r"(?:reduce|reduces|reducing|lower|lowers|lowering|adjust|adjusts|adjusting|adapt|adapts|adapting|moderate|"
        r"moderates|moderating|decrease|decreases|decreasing) (?:the |its |our )?speed",
        r"speed adaptation",
        r"decelerate|decelerates|decelerating|brake|brakes|braking|ease off|eases off|easing off",
    ),
    Longitudinal.GAP_SEARCH: (
        r"(?:search|searches|searching|look|looks|looking|wait|waits|waiting|watch|watches|watching|check|checks|"
        r"checking|scan|scans|scanning) for (?:a |an )?(?:safe |suitable |sufficient |acceptable |large enough )?"
        r"(?:gap|opening)",
        r"(?:find|finds|finding) (?:a |an )?(?:safe |suitable |sufficient |acceptable )?(?:gap|opening)",
        r"gap search(?:ing)?",
    ),
    Longitudinal.ACCELERATE_TO_PASS: (
        r"(?:accelerate|accelerates|accelerating|speed up|speeds up|speeding up) (?:to |and )?"
        r"(?:pass|passing|overtake|overtaking|get ahead)",
        r"(?:accelerate|accelerates|accelerating) past",
    ),
    Longitudinal.YIELD: (
        r"(?:yield|yields|yielding)(?: the right of way)?",
        r"(?:give|gives|giving) way",
        r"wait|waits|waiting",
    ),
    Longitudinal.STOP: (
        r"stop|stops|stopping|halt|halts|halting",
        r"(?:come|comes|coming) to (?:a |an )?(?:full |complete |gentle |smooth |safe |controlled )?(?:stop|halt)",
        r"(?:remain|remains|remaining|stay|stays|staying) (?:stopped|stationary)",
        r"(?:hold|holds|holding) (?:the )?(?:position|stop)",
        r"(?:bring|brings|bringing) (?:the )?(?:ego |ego vehicle |vehicle |car )?to (?:a )?(?:full |complete )?stop",
    ),
}

_LAT_PATTERNS: dict[Lateral, tuple[str, ...]] = {
    Lateral.LANE_KEEP: (
        r"(?:keep|keeps|keeping|stay|stays|staying|remain|remains|remaining|maintain|maintains|maintaining|hold|"
        r"holds|holding) (?:in |within )?" + _LANE + r"(?: centered| center| position)?",
        r"lane (?:keep|keeping|following)",
        r"(?:follow|follows|following) (?:the )?(?:current )?lane",
        r"(?:go|goes|going|continue|continues|continuing|drive|drives|driving|proceed|proceeds|proceeding|head|"
        r"heads|heading) straight(?: ahead)?",
        r"(?:stay|stays|staying|keep|keeps|keeping) centered(?: in " + _LANE + ")?",
    ),
    Lateral.MERGE_SPLIT: (
        r"(?:merge|merges|merging) " + _DIR,
        r"(?:merge|merges|merging) (?:into|onto|to|toward|towards) (?:the )?" + _DIR + r"(?: lane| side)?",
        r"(?:merge|merges|merging)(?: (?:into|onto) (?:the )?(?:traffic|highway|freeway|main road|mainline|"
        r"adjacent lane|target lane))?",
        r"(?:split|splits|splitting) off",
        r"merge split",
        r"(?:take|takes|taking) the " + _DIR + r" (?:fork|split|branch)",
        r"(?:keep|keeps|keeping|bear|bears|bearing|stay|stays|staying) " + _DIR + r" at the (?:fork|split)",
    ),
    Lateral.OUT_OF_LANE_NUDGE: (
        r"(?:nudge|nudges|nudging)(?: slightly| a bit| gently)?(?: " + _DIR + r")? (?:slightly )?(?:out of|outside|"
        r"outside of|across|over) " + _LANE + r"(?: line| boundary| markings?)?",
        r"(?:nudge|nudges|nudging)(?: slightly| a bit| gently)?(?: " + _DIR + r")? (?:slightly )?(?:into|onto) "
        r"(?:the )?(?:adjacent lane|neighboring lane|neighbouring lane|next lane|opposite lane|oncoming lane|"
        r"other lane|shoulder)",
        r"out of lane nudg(?:e|es|ing)",
        r"(?:make|makes|making|perform|performs|performing|do|does|doing) (?:an |a )?out of lane nudge",
        r"(?:partially |briefly |slightly )?(?:leave|leaves|leaving|cross|crosses|crossing) the lane "
        r"(?:line|boundary|marking|markings)",
    ),
    Lateral.IN_LANE_NUDGE: (
        r"(?:nudge|nudges|nudging)(?: slightly| a bit| gently)?(?: " + _DIR + r")?(?: slightly)?(?: (?:within|inside|"
        r"in) " + _LANE + r")?",
        r"in lane nudg(?:e|es|ing)",
        r"(?:make|makes|making|perform|performs|performing|do|does|doing) (?:an |a )?in lane nudge",
        r"(?:shift|shifts|shifting|bias|biases|biasing|move|moves|moving|drift|drifts|drifting|offset|offsets|"
        r"offsetting)(?: slightly)? " + _DIR + r"(?: slightly)? (?:within|inside|in) " + _LANE,
        r"(?:shift|shifts|shifting|bias|biases|biasing|move|moves|moving|offset|offsets|offsetting)(?: slightly)? "
        r"(?:to|toward|towards) the " + _DIR + r" (?:within|inside|in) " + _LANE,
    ),
    Lateral.LANE_CHANGE: (
        r"(?:change|changes|changing|switch|switches|switching) lanes?(?: (?:to|toward|towards|into) (?:the )?" + _DIR
        + r"(?: lane)?)?",
        r"(?:change|changes|changing|switch|switches|switching|move|moves|moving|shift|shifts|shifting) (?:over )?"
        r"(?:to|into) the " + _DIR + r" lane",
        r"(?:make|makes|making|perform|performs|performing|execute|executes|executing|initiate|initiates|"
        r"initiating|complete|completes|completing|do|does|doing) (?:a |an |the )?(?:" + _DIR + r" )?lane change",
        r"(?:" + _DIR + r" )?lane chang(?:e|es|ing)",
    ),
    Lateral.PULL_OVER: (
        r"(?:pull|pulls|pulling) (?:over|aside|off the road|off)",
        r"(?:pull|pulls|pulling) " + _DIR,
    ),
    Lateral.TURN: (
        r"(?:turn|turns|turning)(?: to the| toward the| towards the)? " + _DIR,
        r"(?:(?:make|makes|making|take|takes|taking|execute|executes|executing|perform|performs|performing|"
        r"complete|completes|completing|do|does|doing) )?(?:(?:a|an|the) )?" + _DIR + r" turn",
        r"(?:(?:make|makes|making|do|does|doing) )?(?:a )?u turn",
        r"turn|turns|turning",
    ),
    Lateral.ABORT: (
        r"(?:abort|aborts|aborting|cancel|cancels|cancelling|canceling|abandon|abandons|abandoning)"
        r"(?: the| this| a| an| our)?(?: (?:planned|ongoing|current|attempted))?"
        r"(?: (?:lane change maneuver|lane change|"
        r"maneuver|manoeuvre|merge|overtake|pass|turn|nudge))?(?: and (?:move|moving|steer|steering|return|returning|"
        r"go|going|swerve|swerving|head|heading|come|coming|pull|pulling)(?: back)?)?",
        r"(?:return|returns|returning|steer|steers|steering|move|moves|moving|go|goes|going) back (?:to|into) (?:the )?"
        r"(?:original|previous|initial|ego|own) lane",
    ),
}

# Phrases that contain decision words but are not decisions; matched and skipped.
_NULL_PATTERNS: tuple[str, ...] = (
    r"stop (?:signs?|lines?|lights?|bars?|and go|controls?)",
    r"yield (?:signs?|lines?|controls?)",
    r"give way signs?",
    r"(?:(?:left|right) )?(?:turn|turning) (?:signals?|lanes?|arrows?|indicators?|bays?|pockets?)",
    r"(?:merge|merging) (?:lanes?|traffic|points?|areas?|zones?|vehicles?|cars?)",
    r"(?:follow|follows|following) (?:the )?(?:planned |navigation |current )?(?:route|path|navigation)",
)

_DIR_AFTER = re.compile(
    r" (?:(?:to|toward|towards|into|onto|on|over to|back to) )?(?:the )?(?P<dir>left|right)"
    r"(?: (?:hand side|side|lane|shoulder|edge|curb))?(?![a-z0-9])")

_COMPONENT_PATTERNS: dict[Component, tuple[str, ...]] = {
    Component.OBJECTS: (
        r"vehicles?|cars?|trucks?|bus|buses|vans?|suvs?|pedestrians?|persons?|people|cyclists?|bicyclists?|bicycles?|"
        r"bikes?|motorcycles?|motorcyclists?|scooters?|cones?|barriers?|barrels?|bollards?|debris|objects?|obstacles?|"
        r"animals?|deer|dogs?|trailers?|traffic|agents?|child|children|jaywalkers?|ambulances?",
        r"road users?|traffic cones?|brake lights?|hazard lights?|turn signals?|blinkers?|indicators?",
    ),
    Component.TRAFFIC_LIGHTS: (
        r"traffic (?:lights?|signals?)|signals?|stoplights?|stop lights?|lights?",
        r"(?:red|green|yellow|amber) (?:lights?|arrows?)",
    ),
    Component.STOP_YIELD_CONTROLS: (
        r"stop (?:signs?|lines?|bars?)|yield (?:signs?|lines?)|give way signs?|signs?|crosswalks?",
        r"(?:all|four|4|two|2) way stops?",
    ),
    Component.ROAD_EVENTS: (
        r"construction(?: zones?)?|work zones?|road ?works?|roadworks?|accidents?|crash|crashes|collisions?|"
        r"road closures?|lane closures?|closures?|closed road|detours?|flaggers?|school zones?|speed (?:bumps?|humps?)|"
        r"potholes?|emergency|incidents?|events?|parade",
    ),
    Component.LANES: (
        r"lanes?(?: (?:lines?|markings?|boundary|boundaries))?|markings?|shoulders?|curbs?|medians?|road edge|gore|"
        r"forks?|curves?|bends?",
    ),
    Component.ROUTING: (
        r"routes?|routing|navigation|nav|exits?|destination|ramps?|off ramps?|on ramps?|planned path|itinerary",
    ),
    Component.CONDITIONS: (
        r"rain|raining|rainy|snow|snowy|snowing|fog|foggy|wet|icy|ice|glare|night|nighttime|dark|darkness|visibility|"
        r"weather|slippery|road surface|low light|sun|sunlight|dusk|dawn|mist|hail|puddles?|flood|flooded|flooding|"
        r"gravel|conditions",
    ),
}


def _compile(pattern: str) -> re.Pattern:
    return re.compile(r"(?:" + pattern + r")(?![a-z0-9])")


_DECISION_RES: tuple[tuple[object, re.Pattern], ...] = tuple(
    [(d, _compile(p)) for d, ps in _LON_PATTERNS.items() for p in ps]
    + [(d, _compile(p)) for d, ps in _LAT_PATTERNS.items() for p in ps]
    + [(None, _compile(p)) for p in _NULL_PATTERNS])
_COMPONENT_RES: tuple[tuple[Component, re.Pattern], ...] = tuple(
    (c, _compile(p)) for c, ps in _COMPONENT_PATTERNS.items() for p in ps)
# One alternation over all patterns: a cheap test whether anything can match at a position. Named
# groups are stripped so the alternation compiles.
_ANY_DECISION = re.compile("|".join(f"(?:{rx.pattern})" for _, rx in _DECISION_RES).replace("?P<dir>", ""))
_ANY_COMPONENT = re.compile("|".join(f"(?:{rx.pattern})" for _, rx in _COMPONENT_RES))
_WORD_OR_MARK = re.compile(r"[a-z0-9]+|[.!?;\n,]")
_HARD_BREAKS = frozenset(".!?;\n")


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
    words = _WORD_OR_MARK.findall(_normalise(cause))
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
        norm = " ".join(_WORD_OR_MARK.findall(_normalise(cause)))
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
# Parse.


@dataclass(frozen=True)
class ParseResult:
    """What `parse` read from a text.

    Attributes:
      ok: True when at least one decision was found.
      longitudinal, lateral: the first decision found on each axis, or None.
      direction: the direction of that lateral decision ("left" / "right"), None when not stated.
      components: the critical-component kinds named outside decision phrases, in enum order.
      reason: why `ok` is False (None when ok).
      ambiguous: more than one distinct decision was found on one axis.
      all_longitudinal, all_lateral: every decision found, in order (duplicates removed).
    """

    ok: bool
    longitudinal: Longitudinal | None = None
    lateral: Lateral | None = None
    direction: str | None = None
    components: tuple[Component, ...] = ()
    reason: str | None = None
    ambiguous: bool = False
    all_longitudinal: tuple[Longitudinal, ...] = ()
    all_lateral: tuple[Lateral, ...] = ()

    def meta_action(self) -> "MetaAction":
        """The coarse meta-action of the parsed decisions (see `meta_action`)."""
        return meta_action(self.longitudinal, self.lateral, self.direction)

    def matches(self, trace: Trace) -> bool:
        """Whether the decisions and direction equal `trace`'s."""
        return (self.longitudinal, self.lateral, self.direction) == (trace.longitudinal, trace.lateral, trace.direction)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def parse(text: object) -> ParseResult:
    """Reads the decisions, direction and components from `text`. Never raises.

    Accepts any object: bytes are decoded as UTF-8 (bad bytes replaced), anything else that is not a
    string is unparseable. Only the first `MAX_PARSE_CHARS` characters are read. See the module
    docstring for the grammar.
    """
    try:
        return _parse(text)
    except Exception as e:  # the contract is "never raises"; a failure here is a bug, reported as such
        return ParseResult(ok=False, reason=f"internal error: {type(e).__name__}: {e}")


def _parse(text: object) -> ParseResult:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: 4 * MAX_PARSE_CHARS]).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return ParseResult(ok=False, reason=f"not a string: {type(text).__name__}")
    # Lone surrogates survive str operations but not everything downstream: drop them.
    text = text[:MAX_PARSE_CHARS].encode("utf-8", errors="ignore").decode("utf-8")
    words = _WORD_OR_MARK.findall(_normalise(text).replace("\u2019", "'"))
    if not any(w not in _HARD_BREAKS and w != "," for w in words):
        return ParseResult(ok=False, reason="empty: no words")
    joined = " ".join(words)
    starts = []
    pos = 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    ends = [s + len(w) for s, w in zip(starts, words)]

    def token_end(char_end: int) -> int:  # index of the first token after a match ending at char_end
        return bisect.bisect_left(ends, char_end) + 1

    lon_found: list[Longitudinal] = []
    lat_found: list[tuple[Lateral, str | None]] = []
    consumed = [False] * len(words)
    active = True
    i = 0
    while i < len(words):
        w = words[i]
        if w in _HARD_BREAKS or w == ",":
            active = True
            i += 1
            continue
        if w in _CLAUSE_WORDS and not (w == "so" and i + 1 < len(words) and words[i + 1] == "that"):
            active = True
            i += 1
            continue
        if not active:
            i += 1
            continue
        best = None
        for decision, rx in (_DECISION_RES if _ANY_DECISION.match(joined, starts[i]) else ()):
            m = rx.match(joined, starts[i])
            if m and (best is None or m.end() > best[1].end()):
                best = (decision, m)
        if best is not None:
            decision, m = best
            end = m.end()
            direction = m.groupdict().get("dir")
            if isinstance(decision, Lateral) and decision in DIRECTIONAL_LATERAL and direction is None:
                d = _DIR_AFTER.match(joined, end)
                if d:
                    direction, end = d.group("dir"), d.end()
            j = token_end(end)
            if decision is not None and not _negated(words, i):
                for k in range(i, j):
                    consumed[k] = True
                if isinstance(decision, Longitudinal):
                    lon_found.append(decision)
                else:
                    lat_found.append((decision, direction if decision in DIRECTIONAL_LATERAL else None))
            i = j
            continue
        if w in _LINK_WORDS or w == "so":  # "so" here is "so that"
            active = False
        i += 1

    components = _components(words, consumed, joined, starts, token_end)
    lon_all = tuple(dict.fromkeys(lon_found))
    lat_all = tuple(dict.fromkeys(lat for lat, _ in lat_found))
    if not lon_found and not lat_found:
        return ParseResult(ok=False, components=components, reason="no decision phrase found")
    lat, direction = lat_found[0] if lat_found else (None, None)
    return ParseResult(ok=True, longitudinal=lon_found[0] if lon_found else None, lateral=lat, direction=direction,
                       components=components, ambiguous=len(lon_all) > 1 or len(lat_all) > 1,
                       all_longitudinal=lon_all, all_lateral=lat_all)


def _negated(words: list[str], i: int) -> bool:
    for k in (i - 1, i - 2):
        if k < 0 or words[k] in _HARD_BREAKS or words[k] == ",":
            return False
        if words[k] in _NEGATORS:
            return True
    return False


def _components(words, consumed, joined, starts, token_end) -> tuple[Component, ...]:
    found: set[Component] = set()
    i = 0
    while i < len(words):
        if consumed[i] or words[i] in _HARD_BREAKS or words[i] == ",":
            i += 1
            continue
        best = None
        for comp, rx in (_COMPONENT_RES if _ANY_COMPONENT.match(joined, starts[i]) else ()):
            m = rx.match(joined, starts[i])
            if m and (best is None or m.end() > best[1].end()):
                best = (comp, m)
        if best is None:
            i += 1
            continue
        j = token_end(best[1].end())
        if not any(consumed[i:j]):
            found.add(best[0])
        i = j
    return tuple(c for c in COMPONENTS if c in found)


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

