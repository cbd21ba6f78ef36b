"""The journey runner: enters customers, fires due steps, resumes instances on their events.

Every replica runs it. A step runs in two parts:

1. its work, which is safe to repeat: a send goes through ``Delivery.deliver`` (the
   ledger's key makes a repeat a no-op, and a crash after recording is sent again by
   ``Delivery.recover``), a branch asks segmentation, a split hashes;
2. one statement that locks the instance, takes its timer (as ``TimerTable.take`` would:
   only one worker does), records the step's outcome once and moves the instance on
   (``JourneyStore.advance``, for a batch of instances).

A worker killed between the two leaves the timer claimed; when its lease ends another
replica runs the step again: the send is not repeated, the outcome is recorded once.

Pausing a campaign holds its instances (a due step is set aside, not run); resuming sets
their timers again; archiving cancels them. Instances finish on the graph version they
entered with (``journey_versions``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2

from eventline_campaigns.audience import Audience, AudienceUnresolvable
from eventline_campaigns.campaign_cache import CampaignCache
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.journey_model import (
    ACTIVE as ACTIVE_INSTANCE,
)
from eventline_campaigns.journey_model import (
    CANCELLED,
    COMPLETED,
    EXITED,
    ONCE_AT_A_TIME,
    ONCE_EVER,
    Journey,
    JourneyStep,
    assign_variant,
    compile_journey,
    customer_zone,
    graph_spec,
    graph_version,
    next_local_time,
    quiet_until,
)
from eventline_campaigns.journey_store import (
    DEFER,
    DISCARD,
    HOLD,
    START,
    Advance,
    Entry,
    Instance,
    InstanceKey,
    JourneyStore,
    Move,
)
from eventline_campaigns.model import (
    ACTIVE,
    ARCHIVED,
    CUSTOMER_TRIGGER,
    MAX_REASON,
    PAUSED,
    PENDING,
    QUIET_HOURS,
    SENT,
    CompiledCampaign,
    Profile,
    Trigger,
)
from eventline_campaigns.polling import poll
from eventline_campaigns.repository import CampaignRepository, CampaignRow
from eventline_shared import faults
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.storage.timers import Due
from eventline_shared.streams.consumer_group import PartitionTakenOver
from eventline_shared.values import datetime_to_timestamp, decode_values, python_values, timestamp_to_datetime

log = logging.getLogger(__name__)

ENTRY_SLOTS: dict[int, str] = {ONCE_EVER: "ever", ONCE_AT_A_TIME: "active"}
"""journey_instances.entry_slot by entry rule: unique per (customer, campaign), so at most one
instance ever (``ever``) or at a time (``active``, cleared when it ends); none for every time."""

GOAL_LOOKBACK = dt.timedelta(days=366)
"""The longest goal window: instances entered before it cannot convert any more."""


@dataclass
class JourneyRunner:
    """Runs journeys' steps; ``run_due`` is the burst mode tests call after moving the clock."""

    store: JourneyStore
    repository: CampaignRepository
    cache: CampaignCache
    delivery: Delivery
    audience: Audience
    clock: Clock = SYSTEM_CLOCK
    batch: int = 500
    parallel: int = 3
    """How many batches of due steps one replica runs at once."""
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        self._journeys: dict[tuple[str, str], Journey] = {}
        self._stop = asyncio.Event()

    # --- versions ---

    async def _journey(self, campaign_id: str, version: str) -> Journey:
        journey = self._journeys.get((campaign_id, version))
        if journey is None:
            spec = await self.store.version(campaign_id, version)
            if spec is None:
                raise LookupError(f"journey {campaign_id} has no version {version}")
            journey = compile_journey(campaign_id, campaigns_pb2.Campaign.FromString(spec))
            self._journeys[(campaign_id, version)] = journey
        return journey

    async def _current_version(self, campaign: CompiledCampaign) -> str:
        row = await self.repository.get_campaign(campaign.campaign_id)
        assert row is not None
        version, data = graph_version(graph_spec(campaigns_pb2.Campaign.FromString(row.spec)))
        if (campaign.campaign_id, version) not in self._journeys:
            await self.store.save_version(campaign.campaign_id, version, data)
            await self._journey(campaign.campaign_id, version)
        return version

    # --- entry ---

    async def enter(self, items: Sequence[tuple[CompiledCampaign, Trigger]]) -> list[InstanceKey]:
        """Start instances for triggered journeys, under each one's entry rule."""
        versions: dict[tuple[str, int], str] = {}
        entries: list[Entry] = []
        for campaign, trigger in items:
            key = (campaign.campaign_id, campaign.revision)
            if key not in versions:
                versions[key] = await self._current_version(campaign)
            slot = ENTRY_SLOTS.get(campaign.entry_rule)
            event = trigger.event
            entries.append(
                Entry(
                    event.customer_id,
                    campaign.campaign_id,
                    event.event_id,
                    versions[key],
                    slot,
                    event.SerializeToString(deterministic=True),
                )
            )
        now = self.clock.now()
        started = await self.store.enter(entries, now)
        await self.fire([Due(k, now) for k in started])
        return started

    # --- due steps ---

    async def run_due(self) -> int:
        """Run every step due now (burst mode); returns how many timers fired."""
        total = 0
        while True:
            due = await self.store.timers.claim(self.store.pool, self.clock.now(), self.batch * self.parallel)
            if not due:
                return total
            total += len(due)
            # Batches of distinct instances, run side by side: their database round trips overlap.
            await asyncio.gather(
                *(self.fire(due[start : start + self.batch]) for start in range(0, len(due), self.batch))
            )
            if len(due) < self.batch * self.parallel:
                return total  # nothing else was due (a step that failed is not claimed again at once)

    async def run(self) -> None:
        """Fire due steps every ``poll_s`` until ``shutdown`` (each round drains what is due)."""
        await poll(self.run_due, self.poll_s, self._stop, "journey steps failed; trying again")

    def shutdown(self) -> None:
        self._stop.set()

    async def fire(self, due: Sequence[Due]) -> None:
        """Run the steps of claimed timers, a batch at a time, then the steps after them that
        are due at once."""
        pending = list(due)
        known: dict[InstanceKey, tuple[Instance, int | None]] = {}
        profiles: dict[str, Profile | None] = {}
        while pending:
            batch, pending = pending[: self.batch], pending[self.batch :]
            pending += await self._fire_batch(batch, known, profiles)

    async def _fire_batch(
        self,
        due: Sequence[Due],
        known: dict[InstanceKey, tuple[Instance, int | None]],
        profiles: dict[str, Profile | None],
    ) -> list[Due]:
        """Run one batch of due steps. ``known`` holds the instances this call of ``fire`` moved
        on to a step due at once, as they were left (with their campaigns' states), and
        ``profiles`` the customers it read: a step following another in the same call is run
        without reading them again (the statement that records it checks, under its locks,
        that the instance is still where it was left); both are updated for the next batch."""
        now = self.clock.now()
        by_key = {(d.key[0], d.key[1], d.key[2]): d for d in due}
        found = {key: known.pop(key) for key in by_key if key in known}
        found.update(await self.store.instances([key for key in by_key if key not in found]))
        instances = {key: instance for key, (instance, _) in found.items()}
        live = [
            i
            for i, state in found.values()
            if i.status == ACTIVE_INSTANCE and state not in (PAUSED, ARCHIVED)
        ]
        unread = sorted({i.customer_id for i in live} - profiles.keys())
        if unread:
            read = await self.repository.profiles(unread)
            profiles.update((customer_id, read.get(customer_id)) for customer_id in unread)
        present = {i.customer_id: p for i in live if (p := profiles.get(i.customer_id)) is not None}
        results = await self._work(live, present, now)
        working = {i.key for i in live}
        await faults.point("journeys.before_advance")
        steps: list[Advance] = []
        for key, claim in by_key.items():
            claimed = claim.due_at
            instance = instances.get(key)
            result = results.get(key)
            if instance is None:
                steps.append(Advance(key, Move("gone"), claimed, None, DISCARD))
            elif instance.status != ACTIVE_INSTANCE:
                steps.append(Advance(key, Move("ended"), claimed, instance.step_id, DISCARD))
            elif isinstance(result, Move):
                steps.append(Advance(key, result, claimed, instance.step_id))
            elif isinstance(result, tuple):
                until, reason = result
                deferral = Move("deferred", reason, due_at=until)
                steps.append(Advance(key, deferral, claimed, instance.step_id, DEFER))
            elif key in working:
                # A step whose work failed (segmentation or a provider down) keeps its claimed timer: it
                # runs again once the claim's lease ends; the batch's other steps go on.
                continue
            else:
                # Its campaign was paused or archived when the batch began: held, or cancelled.
                steps.append(Advance(key, Move("held"), claimed, instance.step_id, HOLD))
        done = await self.store.advance(self.store.pool, steps, now)
        await faults.point("journeys.after_advance")
        following: list[Due] = []
        for a in steps:
            if done.get(a.key) == "go" and (a.move.due_at or now) <= now:
                assert a.move.next_step is not None
                moved = replace(
                    instances[a.key],
                    step_id=a.move.next_step,
                    variant=a.move.variant or instances[a.key].variant,
                )
                known[a.key] = (moved, ACTIVE)
                following.append(Due(a.key, a.move.due_at or now))
        return following

    def _enter_step(
        self,
        journey: Journey,
        instance: Instance,
        step_id: str,
        move: Move,
        now: dt.datetime,
        profile: Profile | None,
    ) -> Move:
        """``move`` going on to ``step_id`` (empty: the journey ends), due as that step says."""
        if not step_id:
            return move
        step = journey.steps[step_id]
        due, waiting = now, None
        if step.kind == "wait":
            if step.duration is not None:
                due = now + step.duration
            else:
                assert step.until_local is not None
                due = next_local_time(now, self._zone(journey, profile), step.until_local)
        elif step.kind == "wait_for_event":
            assert step.timeout is not None and step.event is not None
            due, waiting = now + step.timeout, step.event.event_name
        return Move(move.outcome, move.reason, step_id, due, waiting, move.variant, move.final_status)

    @staticmethod
    def _zone(journey: Journey, profile: Profile | None) -> dt.tzinfo:
        attributes = python_values(decode_values(profile.attributes)) if profile else {}
        return customer_zone(attributes, journey.default_zone)

    async def _work(
        self, live: Sequence[Instance], profiles: Mapping[str, Profile], now: dt.datetime
    ) -> dict[InstanceKey, Move | tuple[dt.datetime, str]]:
        """What each instance's step due now comes to (safe to repeat), or (until, reason) to
        defer a send to the end of quiet hours."""
        results: dict[InstanceKey, Move | tuple[dt.datetime, str]] = {}
        branches: list[tuple[Journey, JourneyStep, Instance]] = []
        sends: list[tuple[Journey, JourneyStep, Instance]] = []
        for instance in live:
            try:
                journey = await self._journey(instance.campaign_id, instance.version)
            except LookupError as exc:
                _failed("load", [instance], exc)
                continue
            profile = profiles.get(instance.customer_id)

            def enter(step_id: str, move: Move) -> Move:
                return self._enter_step(journey, instance, step_id, move, now, profile)  # noqa: B023

            if instance.step_id == START:
                results[instance.key] = enter(journey.first, Move("started"))
                continue
            step = journey.steps[instance.step_id]
            if step.kind == "wait":
                results[instance.key] = enter(step.next_step, Move("done"))
            elif step.kind == "wait_for_event":
                results[instance.key] = enter(step.timed_out_step, Move("timed_out"))
            elif step.kind == "exit":
                results[instance.key] = Move("exit")
            elif step.kind == "split":
                variant = assign_variant(
                    instance.campaign_id, step.step_id, instance.customer_id, step.variants
                )
                outcome = Move(f"variant:{variant.name}", variant=variant.name)
                results[instance.key] = enter("" if variant.control else variant.next_step, outcome)
            elif step.kind == "branch":
                branches.append((journey, step, instance))
            else:
                sends.append((journey, step, instance))
        verdicts = await asyncio.gather(
            *(self._branch(s, i, now) for _, s, i in branches), return_exceptions=True
        )
        for (journey, step, instance), verdict in zip(branches, verdicts, strict=True):
            if isinstance(verdict, BaseException):
                _failed("branch", [instance], verdict)
                continue
            said, why = verdict
            target = step.yes_step if said == "yes" else step.no_step
            results[instance.key] = self._enter_step(
                journey, instance, target, Move(said, why), now, profiles.get(instance.customer_id)
            )
        try:
            results.update(await self._send(sends, profiles, now))
        except PartitionTakenOver:
            raise  # a stream batch whose partition another replica took over: the batch stops here
        except Exception as exc:
            _failed("send", [i for _, _, i in sends], exc)
        return results

    async def _branch(self, step: JourneyStep, instance: Instance, now: dt.datetime) -> tuple[str, str]:
        """("yes" or "no", reason) of a branch's filter for the customer now."""
        assert step.filter is not None
        trigger_event = common_pb2.Event.FromString(instance.trigger)
        try:
            held = await self.audience.match(
                step.filter,
                instance.customer_id,
                trigger_event.context,
                datetime_to_timestamp(now),
                trigger_event_id=trigger_event.event_id,
            )
        except AudienceUnresolvable as exc:
            return "no", f"filter cannot be evaluated: {exc}"[:MAX_REASON]
        return ("yes" if held else "no"), ""

    async def _send(
        self,
        sends: Sequence[tuple[Journey, JourneyStep, Instance]],
        profiles: Mapping[str, Profile],
        now: dt.datetime,
    ) -> dict[InstanceKey, Move | tuple[dt.datetime, str]]:
        """Send steps, all through one ``Delivery.deliver``; those inside quiet hours are deferred."""
        results: dict[InstanceKey, Move | tuple[dt.datetime, str]] = {}
        ready: list[tuple[Journey, JourneyStep, Instance, Profile]] = []
        for journey, step, instance in sends:
            assert step.action is not None
            profile = profiles.get(instance.customer_id)
            if profile is None:
                results[instance.key] = Move("skipped", "customer erased")
                continue
            if journey.quiet is not None and journey.quiet.applies(step.action.channel):
                zone = self._zone(journey, profile)
                until = quiet_until(now, zone, journey.quiet)
                if until is not None:
                    results[instance.key] = (
                        until,
                        f"{QUIET_HOURS}: due {now.astimezone(zone):%Y-%m-%d %H:%M} {zone}, "
                        f"sent at {until.astimezone(zone):%Y-%m-%d %H:%M}",
                    )
                    continue
            ready.append((journey, step, instance, profile))
        if not ready:
            return results
        # Only a journey with quiet hours can have deferred a send (its step then says why).
        notes = await self.store.step_reasons([i for j, _, i, _ in ready if j.quiet is not None])
        items = []
        for journey, step, instance, profile in ready:
            event = common_pb2.Event.FromString(instance.trigger)
            event.event_id = step_event_id(instance.entry_event_id, step.step_id)
            items.append(
                (self._send_campaign(journey, instance.campaign_id, step), Trigger.of(event), profile, "")
            )
        await self.delivery.deliver(items, [notes.get(i.key, "") for _, _, i, _ in ready])
        recorded = await self.store.deliveries(
            [(i.key, step_event_id(i.entry_event_id, s.step_id)) for _, s, i, _ in ready]
        )
        for journey, step, instance, profile in ready:
            found = recorded.get(instance.key, [])
            if any(status in (PENDING, SENT) for status, _ in found):
                outcome = Move("sent")
            else:
                outcome = Move("skipped", next((r for _, r in found if r), "not recorded")[:MAX_REASON])
            results[instance.key] = self._enter_step(journey, instance, step.next_step, outcome, now, profile)
        return results

    def _send_campaign(self, journey: Journey, campaign_id: str, step: JourneyStep) -> CompiledCampaign:
        """The campaign as the delivery path sees one send step: its one action, the campaign's
        frequency cap (as it is now), the version's transactional flag."""
        current = self.cache.active(campaign_id)
        assert step.action is not None
        return CompiledCampaign(
            campaign_id=campaign_id,
            revision=current.revision if current else 0,
            kind=CUSTOMER_TRIGGER,
            event_name="",
            predicates=(),
            audience=None,
            actions=(step.action,),
            cap_max=current.cap_max if current else 0,
            cap_period_s=current.cap_period_s if current else 0.0,
            active_since=current.active_since if current else self.clock.now(),
            transactional=journey.transactional,
        )

    # --- events ---

    async def handle_events(self, events: Sequence[common_pb2.Event]) -> int:
        """Resume instances waiting for these customer events, exit instances on their exit event,
        count goals; returns how many instances moved on."""
        names = sorted({e.name for e in events})
        listening = sorted({c.campaign_id for c in self.cache.journeys() if c.listens.intersection(names)})
        now = self.clock.now()
        found = await self.store.listening(
            sorted({e.customer_id for e in events}), names, listening, now - GOAL_LOOKBACK
        )
        if not found:
            return 0
        by_customer: dict[str, list[tuple[Instance, str | None]]] = {}
        for item in found:
            by_customer.setdefault(item[0].customer_id, []).append(item)
        resumed: list[Due] = []
        for event in events:
            occurred = timestamp_to_datetime(event.occurred_at)
            for instance, waiting in by_customer.get(event.customer_id, []):
                trigger = common_pb2.Event.FromString(instance.trigger)
                if event.event_id == instance.entry_event_id or occurred < timestamp_to_datetime(
                    trigger.occurred_at
                ):
                    continue  # the trigger itself, or an event before it
                journey = await self._journey(instance.campaign_id, instance.version)
                context = trigger.context
                if (
                    journey.goal is not None
                    and instance.entered_at <= occurred <= instance.entered_at + journey.goal_window
                    and journey.goal.matches(event, context)
                ):
                    await self.store.convert(instance.key, occurred)
                if instance.status != 1:
                    continue
                if journey.exit_event is not None and journey.exit_event.matches(event, context):
                    await self._exit(instance, now)
                    continue
                step = journey.steps.get(instance.step_id)
                if (
                    waiting
                    and step is not None
                    and step.event is not None
                    and step.event.matches(event, context)
                ):
                    due = await self._arrive(journey, step, instance, now)
                    if due is not None:
                        resumed.append(due)
        await self.fire(resumed)
        return len(resumed)

    async def _exit(self, instance: Instance, now: dt.datetime) -> None:
        await self.store.advance(
            self.store.pool, [Advance(instance.key, Move("exited", final_status=EXITED))], now
        )

    async def _arrive(
        self, journey: Journey, step: JourneyStep, instance: Instance, now: dt.datetime
    ) -> Due | None:
        """The awaited event arrived: record it and move on to the arrived path (unless the
        instance left the step meanwhile)."""
        following = journey.steps.get(step.arrived_step)
        profile = None
        if following is not None and following.until_local is not None:  # only a local time needs the zone
            profile = (await self.repository.profiles([instance.customer_id])).get(instance.customer_id)
        move = self._enter_step(journey, instance, step.arrived_step, Move("arrived"), now, profile)
        done = await self.store.advance(
            self.store.pool, [Advance(instance.key, move, at_step=step.step_id)], now
        )
        if done.get(instance.key) == "go" and (move.due_at or now) <= now:
            return Due(instance.key, move.due_at or now)
        return None


def _failed(what: str, instances: Sequence[Instance], exc: BaseException) -> None:
    log.warning(
        "journey steps failed; they run again after their claim's lease",
        extra={"work": what, "instances": len(instances), "error": repr(exc)[:300]},
    )


def step_event_id(entry_event_id: str, step_id: str) -> str:
    """The ledger's event id of a journey's send step: the entry event's, with the step's id."""
    return f"{entry_event_id}/{step_id}"


async def journey_stats(store: JourneyStore, row: CampaignRow) -> campaigns_pb2.GetJourneyStatsResponse:
    """A journey's counts per step (the current version's order first) and per split variant."""
    reply = campaigns_pb2.GetJourneyStatsResponse()
    spec = campaigns_pb2.Campaign.FromString(row.spec)
    counts = {r["step_id"]: r for r in await store.step_counts(row.campaign_id)}
    order = [s.step_id for s in spec.steps] + sorted(set(counts) - {s.step_id for s in spec.steps})
    reasons: dict[str, dict[str, int]] = {}
    for step_id, reason, count in await store.skip_reasons(row.campaign_id):
        reasons.setdefault(step_id, {})[reason or "unknown"] = count
    for step_id in order:
        stats = campaigns_pb2.StepStats(step_id=step_id)
        found = counts.get(step_id)
        if found is not None:
            for name in ("entered", "waiting", "sent", "skipped", "deferred", "exited", "converted"):
                setattr(stats, name, found[name])
        stats.reasons.update(reasons.get(step_id, {}))
        reply.steps.append(stats)
    for r in await store.variant_counts(row.campaign_id):
        reply.variants.append(
            campaigns_pb2.VariantStats(
                step_id=r["step_id"],
                variant=r["variant"].removeprefix("variant:"),
                entered=r["entered"],
                converted=r["converted"],
            )
        )
    totals = await store.totals(row.campaign_id)
    reply.active = totals.get(1, 0)
    reply.completed = totals.get(COMPLETED, 0)
    reply.exited = totals.get(EXITED, 0)
    reply.cancelled = totals.get(CANCELLED, 0)
    reply.converted = await store.converted(row.campaign_id)
    return reply
