"""Journeys as the worker runs them: the step graph, its checks, split assignment, local time.

A campaign with ``steps`` is a journey (see docs/journeys.md): a customer event enters a
customer into an instance at the first step; each step names the steps that follow it.
Campaigns without steps are one-step journeys that send their ``actions`` at once, by the
path they always took (``engine.Engine``).

Nothing here touches storage or the network: ``journey_store`` keeps instances,
``journeys`` runs them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2

from eventline_campaigns.model import ChannelNumber, CompiledAction, compile_action
from eventline_predicates.evaluation import predicate_holds
from eventline_predicates.filters import check_event_predicates
from eventline_predicates.periods import time_zone
from eventline_shared.errors import FieldViolation, InvalidArgument, quote
from eventline_shared.values import check_code, check_duration, check_id

EntryRule: TypeAlias = campaigns_pb2.EntryRule
EVERY_TIME = campaigns_pb2.ENTRY_RULE_EVERY_TIME
ONCE_EVER = campaigns_pb2.ENTRY_RULE_ONCE_EVER
ONCE_AT_A_TIME = campaigns_pb2.ENTRY_RULE_ONCE_AT_A_TIME

# The status of an instance (journey_instances.status).
ACTIVE = 1
COMPLETED = 2
EXITED = 3
CANCELLED = 4

MAX_STEPS = 50
MAX_VARIANTS = 10
MAX_WEIGHT = 10_000
STEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
LOCAL_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
MIN_WAIT = dt.timedelta(seconds=1)
MAX_WAIT = dt.timedelta(days=366)
UTC = dt.UTC


@dataclass(frozen=True)
class EventMatcher:
    """An event name with context predicates whose operands may reference the trigger's context."""

    event_name: str
    predicates: tuple[segmentation_pb2.Predicate, ...]

    def matches(self, event: common_pb2.Event, trigger_context: Mapping[str, common_pb2.Value]) -> bool:
        if event.name != self.event_name:
            return False
        bound = check_event_predicates(self.predicates, "predicates", trigger_context)
        if bound.violations:
            return False  # a reference the trigger lacks never holds
        return all(predicate_holds(p, event.context) for p in bound.predicates)


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    next_step: str
    control: bool


@dataclass(frozen=True)
class JourneyStep:
    """One step: ``kind`` is send, wait, wait_for_event, branch, split or exit."""

    step_id: str
    kind: str
    next_step: str = ""
    """send and wait: the step that follows."""
    action: CompiledAction | None = None
    duration: dt.timedelta | None = None
    until_local: dt.time | None = None
    event: EventMatcher | None = None
    timeout: dt.timedelta | None = None
    arrived_step: str = ""
    timed_out_step: str = ""
    filter: segmentation_pb2.Filter | None = None
    yes_step: str = ""
    no_step: str = ""
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class Quiet:
    """Quiet hours in local time; ``channels`` empty means every channel."""

    start: dt.time
    end: dt.time
    channels: frozenset[int]

    def applies(self, channel: ChannelNumber) -> bool:
        return not self.channels or channel in self.channels


@dataclass(frozen=True)
class Journey:
    """One version of a journey's graph."""

    campaign_id: str
    version: str
    steps: Mapping[str, JourneyStep]
    first: str
    order: tuple[str, ...]
    exit_event: EventMatcher | None
    goal: EventMatcher | None
    goal_window: dt.timedelta
    default_zone: str
    quiet: Quiet | None
    transactional: bool


def is_journey(spec: campaigns_pb2.Campaign) -> bool:
    return len(spec.steps) > 0


def graph_spec(spec: campaigns_pb2.Campaign) -> campaigns_pb2.Campaign:
    """The parts of a campaign a journey version keeps (what its instances run on)."""
    graph = campaigns_pb2.Campaign(
        steps=spec.steps,
        default_time_zone=spec.default_time_zone,
        transactional=spec.transactional,
    )
    for name in ("exit_event", "goal", "quiet_hours"):
        if spec.HasField(name):
            getattr(graph, name).CopyFrom(getattr(spec, name))
    return graph


def graph_version(graph: campaigns_pb2.Campaign) -> tuple[str, bytes]:
    """(version, stored bytes) of a graph: the version is a hash of what is stored."""
    data = graph.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16], data


def _local(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def _matcher(match: campaigns_pb2.EventMatch) -> EventMatcher:
    return EventMatcher(match.event_name, tuple(match.context_predicates))


def compile_journey(campaign_id: str, graph: campaigns_pb2.Campaign) -> Journey:
    """A stored graph (checked when it was saved) as the runner uses it."""
    version, _ = graph_version(graph)
    steps: dict[str, JourneyStep] = {}
    for step in graph.steps:
        kind = step.WhichOneof("kind") or ""
        if kind == "send":
            steps[step.step_id] = JourneyStep(
                step.step_id, kind, step.send.next_step_id, action=compile_action(step.send.action)
            )
        elif kind == "wait":
            wait = step.wait
            steps[step.step_id] = JourneyStep(
                step.step_id,
                kind,
                wait.next_step_id,
                duration=wait.duration.ToTimedelta() if wait.HasField("duration") else None,
                until_local=_local(wait.until_local_time) if wait.until_local_time else None,
            )
        elif kind == "wait_for_event":
            waiting = step.wait_for_event
            steps[step.step_id] = JourneyStep(
                step.step_id,
                kind,
                event=_matcher(waiting.event),
                timeout=waiting.timeout.ToTimedelta(),
                arrived_step=waiting.arrived_step_id,
                timed_out_step=waiting.timed_out_step_id,
            )
        elif kind == "branch":
            steps[step.step_id] = JourneyStep(
                step.step_id,
                kind,
                filter=step.branch.filter,
                yes_step=step.branch.yes_step_id,
                no_step=step.branch.no_step_id,
            )
        elif kind == "split":
            variants = tuple(
                Variant(v.name, v.weight, v.next_step_id, v.control) for v in step.split.variants
            )
            steps[step.step_id] = JourneyStep(step.step_id, kind, variants=variants)
        else:
            steps[step.step_id] = JourneyStep(step.step_id, "exit")
    quiet = None
    if graph.HasField("quiet_hours"):
        q = graph.quiet_hours
        quiet = Quiet(_local(q.start), _local(q.end), frozenset(q.channels))
    return Journey(
        campaign_id=campaign_id,
        version=version,
        steps=steps,
        first=graph.steps[0].step_id,
        order=tuple(s.step_id for s in graph.steps),
        exit_event=_matcher(graph.exit_event) if graph.HasField("exit_event") else None,
        goal=_matcher(graph.goal.event) if graph.HasField("goal") else None,
        goal_window=graph.goal.window.ToTimedelta() if graph.HasField("goal") else dt.timedelta(0),
        default_zone=graph.default_time_zone,
        quiet=quiet,
        transactional=graph.transactional,
    )


def successors(step: JourneyStep) -> list[str]:
    """The steps a step may lead to (empty names: the journey ends there)."""
    names = [step.next_step, step.arrived_step, step.timed_out_step, step.yes_step, step.no_step]
    names += [v.next_step for v in step.variants]
    return [n for n in names if n]


# --- checks (when a campaign is saved) ---


def _check_match(match: campaigns_pb2.EventMatch, path: str) -> list[FieldViolation]:
    found = [v for v in [check_code(match.event_name, f"{path}.event_name", "event name")] if v]
    found += check_event_predicates(match.context_predicates, f"{path}.context_predicates", None).violations
    return found


def _check_local(text: str, path: str) -> list[FieldViolation]:
    if not LOCAL_TIME.fullmatch(text):
        return [FieldViolation(path, 'must be a local time "HH:MM" (00:00 to 23:59)')]
    return []


def _check_step(
    step: campaigns_pb2.Step, path: str, ids: set[str], check_action: object
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    kind = step.WhichOneof("kind")

    def target(name: str, field: str) -> None:
        if name and name not in ids:
            found.append(FieldViolation(f"{path}.{field}", f"no step has the id {name!r}"))

    if kind is None:
        return [FieldViolation(path, "a step needs one of send, wait, wait_for_event, branch, split or exit")]
    if kind == "send":
        if not step.send.HasField("action") or step.send.action.WhichOneof("channel") is None:
            found.append(
                FieldViolation(f"{path}.send.action", "a channel (email, sms, push or webhook) is required")
            )
        else:
            assert callable(check_action)
            found += check_action(step.send.action, f"{path}.send.action")
        target(step.send.next_step_id, "send.next_step_id")
    elif kind == "wait":
        wait = step.wait
        if wait.HasField("duration") == bool(wait.until_local_time):
            found.append(FieldViolation(f"{path}.wait", "one of duration and until_local_time is required"))
        elif wait.HasField("duration"):
            bad = check_duration(wait.duration, f"{path}.wait.duration", minimum=MIN_WAIT, maximum=MAX_WAIT)
            if bad:
                found.append(bad)
        else:
            found += _check_local(wait.until_local_time, f"{path}.wait.until_local_time")
        target(wait.next_step_id, "wait.next_step_id")
    elif kind == "wait_for_event":
        waiting = step.wait_for_event
        found += _check_match(waiting.event, f"{path}.wait_for_event.event")
        bad = check_duration(
            waiting.timeout, f"{path}.wait_for_event.timeout", minimum=MIN_WAIT, maximum=MAX_WAIT
        )
        if bad:
            found.append(bad)
        target(waiting.arrived_step_id, "wait_for_event.arrived_step_id")
        target(waiting.timed_out_step_id, "wait_for_event.timed_out_step_id")
    elif kind == "branch":
        if not step.branch.HasField("filter"):
            found.append(FieldViolation(f"{path}.branch.filter", "a filter is required"))
        target(step.branch.yes_step_id, "branch.yes_step_id")
        target(step.branch.no_step_id, "branch.no_step_id")
    elif kind == "split":
        variants = step.split.variants
        if not 2 <= len(variants) <= MAX_VARIANTS:
            found.append(
                FieldViolation(f"{path}.split.variants", f"2 to {MAX_VARIANTS} variants are required")
            )
        names: set[str] = set()
        for j, variant in enumerate(variants):
            vpath = f"{path}.split.variants[{j}]"
            found += _unique_name(variant.name, f"{vpath}.name", "variant name", names)
            if not 1 <= variant.weight <= MAX_WEIGHT:
                found.append(FieldViolation(f"{vpath}.weight", f"must be from 1 to {MAX_WEIGHT:,}"))
            if variant.control and variant.next_step_id:
                found.append(
                    FieldViolation(f"{vpath}.next_step_id", "a control group receives nothing: no next step")
                )
            target(variant.next_step_id, f"split.variants[{j}].next_step_id")
    return found


def check_step_id(step_id: str, path: str, what: str = "step id") -> FieldViolation | None:
    """A step id (in a journey, or as PreviewMessage and SendTestMessage name one); variant names
    follow the same grammar."""
    return check_id(step_id, path, what, STEP_ID, "1 to 64 letters, digits, '_' or '-'")


def send_step_action(spec: campaigns_pb2.Campaign, step_id: str) -> campaigns_pb2.Action:
    """The action of the campaign's send step ``step_id``; INVALID_ARGUMENT naming ``step_id``
    when the campaign has no such send step."""
    for step in spec.steps:
        if step.step_id == step_id and step.WhichOneof("kind") == "send":
            return step.send.action
    raise InvalidArgument([FieldViolation("step_id", f"the campaign has no send step {quote(step_id)}")])


def _unique_name(name: str, path: str, what: str, seen: set[str]) -> list[FieldViolation]:
    """A step id or variant name: of its grammar, and not used before (``seen`` gains it)."""
    bad = check_step_id(name, path, what)
    repeated = name in seen
    seen.add(name)
    if bad:
        return [bad]
    return [FieldViolation(path, f"{what} {name!r} is used twice")] if repeated else []


def check_steps(
    steps: Sequence[campaigns_pb2.Step], field: str, check_action: object
) -> list[FieldViolation]:
    """Violations of a journey's steps under ``field`` (``campaign.steps``); ``check_action`` checks
    a send step's action with the rules of Campaign.actions."""
    if len(steps) > MAX_STEPS:
        return [FieldViolation(field, f"at most {MAX_STEPS} steps are allowed")]
    found: list[FieldViolation] = []
    ids: set[str] = set()
    for i, step in enumerate(steps):
        found += _unique_name(step.step_id, f"{field}[{i}].step_id", "step id", ids)
    for i, step in enumerate(steps):
        found += _check_step(step, f"{field}[{i}]", ids, check_action)
    if not found:
        found += _check_acyclic(steps, field)
    return found


def _check_acyclic(steps: Sequence[campaigns_pb2.Step], field: str) -> list[FieldViolation]:
    """Steps form no cycle (each runs at most once per instance), and every step is reachable."""
    journey = compile_journey("check", campaigns_pb2.Campaign(steps=steps))
    index = {s.step_id: i for i, s in enumerate(steps)}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    problems: list[FieldViolation] = []

    def visit(name: str) -> None:
        state[name] = 1
        for nxt in successors(journey.steps[name]):
            if state.get(nxt) == 1:
                problems.append(
                    FieldViolation(
                        f"{field}[{index[name]}]", f"leads back to step {nxt!r}: steps form no cycle"
                    )
                )
            elif nxt not in state:
                visit(nxt)
        state[name] = 2

    visit(journey.first)
    for i, step in enumerate(steps):
        if step.step_id not in state:
            problems.append(FieldViolation(f"{field}[{i}]", "no path from the first step reaches this step"))
    return problems


def check_journey_fields(
    campaign: campaigns_pb2.Campaign, field: str, wanted: object
) -> list[FieldViolation]:
    """Violations of the journey-level fields (entry rule, exit event, goal, time zone, quiet hours)."""
    assert callable(wanted)
    found: list[FieldViolation] = []
    if wanted("entry_rule") and campaign.entry_rule not in (0, EVERY_TIME, ONCE_EVER, ONCE_AT_A_TIME):
        found.append(FieldViolation(f"{field}.entry_rule", "must be one of the EntryRule values"))
    if wanted("exit_event") and campaign.HasField("exit_event"):
        found += _check_match(campaign.exit_event, f"{field}.exit_event")
    if wanted("goal") and campaign.HasField("goal"):
        found += _check_match(campaign.goal.event, f"{field}.goal.event")
        bad = check_duration(campaign.goal.window, f"{field}.goal.window", minimum=MIN_WAIT, maximum=MAX_WAIT)
        if bad:
            found.append(bad)
    if wanted("default_time_zone") and campaign.default_time_zone:
        try:
            time_zone(campaign.default_time_zone, f"{field}.default_time_zone")
        except InvalidArgument as exc:
            found += exc.violations
    if wanted("quiet_hours") and campaign.HasField("quiet_hours"):
        quiet = campaign.quiet_hours
        found += _check_local(quiet.start, f"{field}.quiet_hours.start")
        found += _check_local(quiet.end, f"{field}.quiet_hours.end")
        if quiet.start and quiet.start == quiet.end:
            found.append(FieldViolation(f"{field}.quiet_hours.end", "must differ from start"))
        for j, channel in enumerate(quiet.channels):
            if channel not in campaigns_pb2.Channel.values() or channel == campaigns_pb2.CHANNEL_UNSPECIFIED:
                found.append(FieldViolation(f"{field}.quiet_hours.channels[{j}]", "must be a Channel value"))
    return found


# --- split assignment ---


def split_point(campaign_id: str, step_id: str, customer_id: str) -> float:
    """Where a customer falls in [0, 1) for a split: the same for the same (campaign, step, customer)."""
    digest = hashlib.sha256(f"{campaign_id}\x00{step_id}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(campaign_id: str, step_id: str, customer_id: str, variants: Sequence[Variant]) -> Variant:
    """The variant of a customer: deterministic per (campaign, split step, customer), in
    proportion to the variants' weights."""
    point = split_point(campaign_id, step_id, customer_id) * sum(v.weight for v in variants)
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return variants[-1]


# --- local time ---


def customer_zone(attributes: Mapping[str, object], default: str) -> dt.tzinfo:
    """A customer's time zone: the profile's ``time_zone`` attribute when it is a known IANA
    name, else the journey's default, else UTC."""
    for name in (attributes.get("time_zone"), default):
        if isinstance(name, str) and name:
            try:
                return time_zone(name)
            except InvalidArgument:
                continue
    return UTC


def _at_local(day: dt.date, at: dt.time, zone: dt.tzinfo) -> dt.datetime:
    """The instant ``at`` on ``day`` in ``zone`` (a time skipped by a DST change is read with
    the offset before the change, as zoneinfo does: 02:30 on a spring-forward day is 03:30)."""
    return dt.datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def next_local_time(now: dt.datetime, zone: dt.tzinfo, at: dt.time) -> dt.datetime:
    """The next instant after ``now`` that is ``at`` in ``zone`` (today if still ahead)."""
    today = now.astimezone(zone).date()
    for days in range(3):
        candidate = _at_local(today + dt.timedelta(days=days), at, zone)
        if candidate > now:
            return candidate
    raise AssertionError("a local time occurs within three days")


def quiet_until(now: dt.datetime, zone: dt.tzinfo, quiet: Quiet) -> dt.datetime | None:
    """When the quiet hours ``now`` falls in end (an instant), or None outside them."""
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    start, end = quiet.start, quiet.end
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return None
    day = local.date()
    if start > end and clock >= start:
        day += dt.timedelta(days=1)  # crossing midnight: they end tomorrow
    return _at_local(day, end, zone)
