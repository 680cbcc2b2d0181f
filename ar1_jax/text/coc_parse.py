"""Reading Chain-of-Causation traces back from text: `parse` and its phrase patterns.

`parse(text)` reads the decisions, their direction and the critical-cause components from any text
in the grammar of `ar1_jax.text.coc` (whose `format` writes it) and never raises.

The parser scans each sentence left to right: at every word it tries the decision phrases (longest
match wins; phrases such as "stop sign" or "turn lane" are recognised and ignored), reads a direction
after a lateral phrase ("to the left"), skips negated phrases ("do not change lanes"), and stops at
the first LINK word: what follows is the cause, so "Stop to yield to the pedestrian" is a stop, and a
cause that mentions "the stop sign" or "the turning truck" adds no decision. Scanning resumes after
a comma, at "then" or "so" (not "so that"), or at the next sentence. The first decision found on each
axis is the answer; `ambiguous` says when more than one distinct decision was found on an axis.
Components are the critical-cause keywords found outside decision phrases ("lane" in "keep lane"
does not count as a lanes cause).

Patterns are regular expressions over the normalised word string (`coc.normalise`, words and marks
of `coc.WORD_OR_MARK` joined by single spaces).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from ar1_jax.text.coc import (CAUSE_LINKS, COMPONENTS, DIRECTIONAL_LATERAL, WORD_OR_MARK, Component, Lateral,
                              Longitudinal, MetaAction, Trace, meta_action, normalise)

__all__ = ["ParseResult", "parse", "MAX_PARSE_CHARS"]

# Single words that end the decision part of a clause while parsing.
_LINK_WORDS = frozenset(w for w in CAUSE_LINKS if " " not in w) | {"due", "owing", "thanks"}
# Words that start a new clause (like a comma): "..., so stop", "... and then turn left". "so that" is a link.
_CLAUSE_WORDS = frozenset({"then", "so"})
_NEGATORS = frozenset({"not", "no", "never", "without", "avoid", "avoiding", "dont", "t", "cannot", "nor",
                       "instead", "refrain", "rather"})
#: Characters beyond this many are ignored by `parse` (a trace is ~40 tokens).
MAX_PARSE_CHARS = 8192

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
_HARD_BREAKS = frozenset(".!?;\n")



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


def parse(text: object) -> ParseResult:
    """Reads the decisions, direction and components from `text`. Never raises.

    Accepts any object: bytes are decoded as UTF-8 (bad bytes replaced), anything else that is not a
    string is unparseable. Only the first `MAX_PARSE_CHARS` characters are read. The grammar is in
    `ar1_jax.text.coc`'s docstring, how it is scanned in this module's.
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
    words = WORD_OR_MARK.findall(normalise(text).replace("\u2019", "'"))
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
        best = _longest_match(_DECISION_RES, _ANY_DECISION, joined, starts[i])
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


def _longest_match(table, any_rx: re.Pattern, joined: str, pos: int):
    """`(label, match)` of the longest pattern of `table` matching `joined` at char `pos`, or None
    (`any_rx`, the alternation of them all, rules a position out cheaply)."""
    best = None
    for label, rx in (table if any_rx.match(joined, pos) else ()):
        m = rx.match(joined, pos)
        if m and (best is None or m.end() > best[1].end()):
            best = (label, m)
    return best


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
        best = _longest_match(_COMPONENT_RES, _ANY_COMPONENT, joined, starts[i])
        if best is None:
            i += 1
            continue
        j = token_end(best[1].end())
        if not any(consumed[i:j]):
            found.add(best[0])
        i = j
    return tuple(c for c in COMPONENTS if c in found)
