"""Turning trigger events into recorded, then sent, deliveries.

Exactly once, step by step:

1. the deliveries of a trigger are rendered and written to the ledger in one
   transaction (``INSERT ... ON CONFLICT DO NOTHING`` on (customer, campaign,
   event, channel)), pending ones with a lease;
2. only rows this worker inserted (or whose lease expired: their sender
   crashed) are sent, each with its delivery id as the idempotency key;
3. the outcome is written back (sent / failed, or pending again with a later
   lease after a transient provider error);
4. only then is the stream entry acknowledged.

A worker killed anywhere leaves either an unacknowledged entry (reprocessed
by another replica: the ledger makes it a no-op apart from taking over
expired leases) or a pending row with a lease (sent again, with the same
idempotency key, once the lease expires).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2

from eventline_campaigns.audience import Audience, AudienceUnresolvable
from eventline_campaigns.channels import (
    EMAIL,
    PUSH,
    SMS,
    WEBHOOK,
    Channel,
    FileSink,
    Message,
    PermanentError,
    TransientError,
    with_retries,
)
from eventline_campaigns.links import UnsubscribeLinks
from eventline_campaigns.model import (
    ACTIVE,
    CUSTOMER_TRIGGER,
    FAILED,
    PENDING,
    SENT,
    SKIPPED,
    SYSTEM_TRIGGER,
    CompiledAction,
    CompiledCampaign,
    TemplateSource,
    compile_campaign,
)
from eventline_campaigns.polling import poll
from eventline_campaigns.rendering import Rendering
from eventline_campaigns.repository import (
    CampaignChanged,
    CampaignRepository,
    Outcome,
    Owned,
    Planned,
    Profile,
    SuppressionRepository,
    normal_address,
)
from eventline_shared import faults
from eventline_shared.values import decode_values, python_values, timestamp_to_datetime

log = logging.getLogger(__name__)

GRANTED = common_pb2.CONSENT_GRANTED
_CHANNEL_WORDS = {EMAIL: "e-mail", SMS: "SMS", PUSH: "push", WEBHOOK: "webhook"}


class CampaignCache:
    """The active campaigns by trigger, reloaded whenever any campaign changes.

    Every replica polls the campaigns' highest revision (one index-only query)
    every ``poll_s``; a change therefore reaches every replica within about
    ``poll_s`` plus the reload time.
    """

    def __init__(self, repository: CampaignRepository, poll_s: float = 0.25) -> None:
        self.repository = repository
        self.poll_s = poll_s
        self._seen: tuple[int, int] | None = None
        self._compiled: dict[tuple[str, int], CompiledCampaign] = {}
        self._by_trigger: dict[tuple[int, str], list[CompiledCampaign]] = {}
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    def for_trigger(self, kind: int, name: str) -> list[CompiledCampaign]:
        return self._by_trigger.get((kind, name), [])

    async def refresh(self) -> bool:
        """Reload when anything changed; returns whether it did."""
        async with self._lock:
            seen = await self.repository.campaigns_revision()
            if seen == self._seen:
                return False
            rows = await self.repository.active_campaigns()
            compiled: dict[tuple[str, int], CompiledCampaign] = {}
            by_trigger: dict[tuple[int, str], list[CompiledCampaign]] = defaultdict(list)
            for row in rows:
                key = (row.campaign_id, row.revision)
                campaign = self._compiled.get(key)
                if campaign is None:
                    try:
                        spec = campaigns_pb2.Campaign.FromString(row.spec)
                        assert row.active_since is not None
                        campaign = compile_campaign(row.campaign_id, row.revision, spec, row.active_since)
                    except Exception:
                        log.exception("cannot compile campaign", extra={"campaign_id": row.campaign_id})
                        continue
                compiled[key] = campaign
                by_trigger[(campaign.kind, campaign.event_name)].append(campaign)
            self._compiled = compiled
            self._by_trigger = dict(by_trigger)
            self._seen = seen
            log.info("campaigns loaded", extra={"active": len(compiled), "revision": seen[0]})
            return True

    async def run(self) -> None:
        await poll(self.refresh, self.poll_s, self._stop, "cannot reload campaigns")

    def shutdown(self) -> None:
        self._stop.set()


def _address(profile: Profile, channel: int) -> tuple[list[str], int]:
    if channel == WEBHOOK:
        return [], GRANTED  # a webhook goes to its action's URL, whatever the customer's addresses
    if channel == EMAIL:
        return ([profile.email] if profile.email else []), profile.email_consent
    if channel == SMS:
        return ([profile.phone] if profile.phone else []), profile.sms_consent
    return list(profile.push_tokens), profile.push_consent


@dataclass
class Trigger:
    """One trigger event as templates and the audience see it."""

    event: common_pb2.Event
    context: dict[str, Any]
    occurred_at: dt.datetime

    @classmethod
    def of(cls, event: common_pb2.Event) -> Trigger:
        return cls(event, python_values(event.context), timestamp_to_datetime(event.occurred_at))


def template_arguments(profile: Profile, trigger: Trigger) -> dict[str, Any]:
    """The arguments of ``templates.variables`` for one customer and trigger (sent to a render worker)."""
    return {
        "customer_id": profile.customer_id,
        "email": profile.email,
        "phone": profile.phone,
        "attributes": python_values(decode_values(profile.attributes)),
        "context": trigger.context,
        "event_name": trigger.event.name,
        "event_id": trigger.event.event_id,
        "occurred_at": trigger.occurred_at,
    }


async def render_actions(
    rendering: Rendering, requests: Sequence[tuple[CompiledAction, dict[str, Any]]]
) -> list[list[str] | str]:
    """Render each (action, template arguments): its parts' texts, or why it failed."""
    sources: dict[TemplateSource, int] = {}
    jobs = [
        (tuple(sources.setdefault(source, len(sources)) for _, source in action.parts), arguments)
        for action, arguments in requests
    ]
    answers = await rendering.render(list(sources), jobs)
    rendered: list[list[str] | str] = []
    for answer in answers:
        failure = next((text for ok, text in answer if not ok), None)
        rendered.append(failure if failure is not None else [text for _, text in answer])
    return rendered


PlanItem = tuple[CompiledCampaign, Trigger, Profile, str]
"""A campaign, its trigger, a customer and (when the deliveries are skipped) the reason."""


SUPPRESSION_WORDS: dict[int, str] = {
    campaigns_pb2.SUPPRESSION_REASON_HARD_BOUNCE: "hard bounce",
    campaigns_pb2.SUPPRESSION_REASON_COMPLAINT: "complaint",
    campaigns_pb2.SUPPRESSION_REASON_SOFT_BOUNCES: "soft bounces",
    campaigns_pb2.SUPPRESSION_REASON_MANUAL: "added by hand",
}


def suppressible(items: Sequence[PlanItem]) -> list[tuple[int, str]]:
    """The (channel, address) pairs of e-mail and SMS deliveries ``plan`` would render."""
    pairs = set()
    for campaign, _, profile, skip_reason in items:
        if skip_reason:
            continue
        for action in campaign.actions:
            if action.channel in (EMAIL, SMS):
                to, consent = _address(profile, action.channel)
                if to and consent == GRANTED:
                    pairs.add((action.channel, normal_address(action.channel, to[0])))
    return sorted(pairs)


async def plan(
    rendering: Rendering,
    items: Sequence[PlanItem],
    suppressed: Mapping[tuple[int, str], int] | None = None,
    links: UnsubscribeLinks | None = None,
) -> list[list[Planned]]:
    """For each item, the deliveries of the campaign to the customer: rendered, skipped or failed.

    ``suppressed`` holds the suppressed (channel, address) pairs among the items' with
    their reason: those deliveries are skipped, ``suppressed: <reason>``. With ``links``,
    the e-mails of campaigns that are not transactional carry their List-Unsubscribe URLs.
    """
    planned: list[list[Planned | None]] = [[] for _ in items]
    requests: list[tuple[CompiledAction, dict[str, Any]]] = []
    places: list[tuple[int, int, list[str]]] = []
    for n, (campaign, trigger, profile, skip_reason) in enumerate(items):
        arguments: dict[str, Any] | None = None
        for action in campaign.actions:
            word = _CHANNEL_WORDS[action.channel]
            if skip_reason:
                planned[n].append(Planned(profile.customer_id, action.channel, SKIPPED, skip_reason, None))
                continue
            to, consent = ([action.url], GRANTED) if action.channel == WEBHOOK else _address(profile, action.channel)
            if consent != GRANTED:
                planned[n].append(
                    Planned(profile.customer_id, action.channel, SKIPPED, f"no {word} consent", None)
                )
                continue
            if not to:
                planned[n].append(
                    Planned(profile.customer_id, action.channel, SKIPPED, f"no {word} address", None)
                )
                continue
            reason = (suppressed or {}).get((action.channel, normal_address(action.channel, to[0])))
            if reason is not None and action.channel in (EMAIL, SMS):
                planned[n].append(
                    Planned(
                        profile.customer_id,
                        action.channel,
                        SKIPPED,
                        f"suppressed: {SUPPRESSION_WORDS.get(reason, 'suppressed')}",
                        None,
                    )
                )
                continue
            if arguments is None:
                arguments = template_arguments(profile, trigger)
            requests.append((action, arguments))
            places.append((n, len(planned[n]), to))
            planned[n].append(None)  # rendered below
    rendered = await render_actions(rendering, requests)
    for (n, position, to), (action, _), texts in zip(places, requests, rendered, strict=True):
        customer_id = items[n][2].customer_id
        if isinstance(texts, str):
            planned[n][position] = Planned(
                customer_id, action.channel, FAILED, f"template: {texts}"[:1000], None
            )
        else:
            message = action.message(0, to, texts)
            campaign = items[n][0]
            if links is not None and action.channel == EMAIL and not campaign.transactional:
                message.unsubscribe = links.urls(customer_id, "email", campaign.campaign_id)
            planned[n][position] = Planned(customer_id, action.channel, PENDING, "", message.to_json())
    return [[p for p in deliveries if p is not None] for deliveries in planned]


Keepalive = Callable[[], Awaitable[None]]

CAPPED_BATCH = 200
"""Fan-out batch size of a campaign with a frequency cap (one advisory lock per customer)."""


async def _nothing() -> None:
    return None


class Engine:
    """Records and sends the deliveries of trigger events (no knowledge of the stream)."""

    def __init__(
        self,
        repository: CampaignRepository,
        cache: CampaignCache,
        audience: Audience,
        channels: Mapping[int, Channel],
        rendering: Rendering,
        *,
        lease_s: float = 60.0,
        send_attempts: int = 3,
        send_concurrency: int = 32,
        fanout_batch: int = 1000,
        retry_base_s: float = 0.05,
        unsubscribe_links: UnsubscribeLinks | None = None,
    ) -> None:
        self.repository = repository
        self.suppressions = SuppressionRepository(repository.pool)
        self.unsubscribe_links = unsubscribe_links
        self.cache = cache
        self.audience = audience
        self.channels = channels
        self.rendering = rendering
        self.lease_s = lease_s
        self.send_attempts = send_attempts
        self.max_calls = send_attempts * 5
        self.fanout_batch = fanout_batch
        self.retry_base_s = retry_base_s
        self._send_limit = asyncio.Semaphore(send_concurrency)

    async def _plan(self, items: Sequence[PlanItem]) -> list[list[Planned]]:
        """``plan`` with the suppressions of the items' addresses (one query)."""
        suppressed = await self.suppressions.suppressed(suppressible(items))
        return await plan(self.rendering, items, suppressed, self.unsubscribe_links)

    # --- customer events ---

    async def handle_customer_events(self, events: Sequence[common_pb2.Event]) -> None:
        """Record and send the deliveries of a batch of customer events."""
        pairs: list[tuple[CompiledCampaign, Trigger]] = []
        for event in events:
            received = timestamp_to_datetime(event.received_at)
            campaigns = [
                c
                for c in self.cache.for_trigger(CUSTOMER_TRIGGER, event.name)
                if c.triggered_by(event, received)
            ]
            if campaigns:
                trigger = Trigger.of(event)
                pairs += [(c, trigger) for c in campaigns]
        if not pairs:
            return
        verdicts = await asyncio.gather(*(self._in_audience(c, t) for c, t in pairs))
        wanted = [(c, t, reason) for (c, t), (inside, reason) in zip(pairs, verdicts, strict=True) if inside]
        if not wanted:
            return
        profiles = await self.repository.profiles(sorted({t.event.customer_id for _, t, _ in wanted}))
        # A customer erased meanwhile has no profile: nothing to deliver, nothing to keep.
        items = [
            (campaign, trigger, profiles[trigger.event.customer_id], reason)
            for campaign, trigger, reason in wanted
            if trigger.event.customer_id in profiles
        ]
        uncapped: list[tuple[str, str, Planned]] = []
        capped = []
        for (campaign, trigger, _, _), planned in zip(items, await self._plan(items), strict=True):
            if campaign.cap_max:
                capped.append(
                    self.repository.record(
                        campaign.campaign_id,
                        trigger.event.event_id,
                        planned,
                        lease_s=self.lease_s,
                        cap_max=campaign.cap_max,
                        cap_period_s=campaign.cap_period_s,
                    )
                )
            else:
                uncapped += [(campaign.campaign_id, trigger.event.event_id, p) for p in planned]
        recorded = await asyncio.gather(self.repository.record_many(uncapped, lease_s=self.lease_s), *capped)
        await self.send([owned for batch in recorded for owned in batch])

    async def _in_audience(self, campaign: CompiledCampaign, trigger: Trigger) -> tuple[bool, str]:
        """(whether to record deliveries, skip reason) for one customer."""
        if campaign.audience is None:
            return True, ""
        try:
            matched = await self.audience.match(
                campaign.audience,
                trigger.event.customer_id,
                trigger.event.context,
                trigger.event.occurred_at,
                trigger_event_id=trigger.event.event_id,
            )
        except AudienceUnresolvable as exc:
            return True, f"audience cannot be evaluated: {exc}"[:1000]
        return matched, ""

    # --- system events ---

    async def handle_system_event(self, event: common_pb2.Event, keepalive: Keepalive = _nothing) -> None:
        received = timestamp_to_datetime(event.received_at)
        for campaign in self.cache.for_trigger(SYSTEM_TRIGGER, event.name):
            if campaign.triggered_by(event, received):
                await self.fan_out(campaign, event, keepalive)

    async def fan_out(
        self, campaign: CompiledCampaign, event: common_pb2.Event, keepalive: Keepalive = _nothing
    ) -> int:
        """Deliver a system event's campaign to its audience, batch by batch; returns deliveries sent.

        Resumable: the cursor is the last customer in the ledger (whose rows
        are written in one transaction per batch), and the audience is
        evaluated at the event's occurred_at, so a restarted fan-out continues
        with the same audience, skipping nobody and repeating nobody.

        Changes of the campaign apply at once, on every replica: each batch is
        recorded only if the campaign, read in that transaction (and locked
        against a concurrent change), is still active at the revision the batch
        was rendered with. After an update the fan-out goes on from its cursor
        with the new revision (re-rendering the batch it had rendered); after a
        pause or archive (or an update after which the event no longer triggers
        the campaign) it stops for good. Deliveries recorded before the change
        are still sent: at most the two batches in the pipeline.
        """
        received = timestamp_to_datetime(event.received_at)
        # Where a fan-out spends its time, logged at the end (audience, render, ledger, send).
        spent = dict.fromkeys(("audience", "profiles", "render", "record", "send_wait"), 0.0)
        sent = 0
        outcome = "done"
        while True:
            progress = await self.repository.start_fanout(campaign.campaign_id, event.event_id)
            if progress.done:
                return sent
            try:
                sent += await self._fan_out_from(
                    campaign, event, progress.after_customer_id, keepalive, spent
                )
                break
            except CampaignChanged as change:
                sent += change.sent
                latest = await self._current(campaign.campaign_id)
                if latest is None or not latest.triggered_by(event, received):
                    outcome = "stopped: the campaign was paused, archived or no longer triggered by the event"
                    break
                log.info(
                    "campaign changed during its fan-out; going on with the new revision",
                    extra={"campaign_id": campaign.campaign_id, "revision": latest.revision},
                )
                campaign = latest
        await self.repository.finish_fanout(campaign.campaign_id, event.event_id)
        log.info(
            "fan-out " + outcome.split(":")[0],
            extra={
                "campaign_id": campaign.campaign_id,
                "event_id": event.event_id,
                "sent": sent,
                "outcome": outcome,
                **{f"{phase}_s": round(seconds, 3) for phase, seconds in spent.items()},
            },
        )
        return sent

    async def _current(self, campaign_id: str) -> CompiledCampaign | None:
        """The campaign as stored now, if it is active."""
        row = await self.repository.get_campaign(campaign_id)
        if row is None or row.state != ACTIVE or row.active_since is None:
            return None
        return compile_campaign(
            row.campaign_id, row.revision, campaigns_pb2.Campaign.FromString(row.spec), row.active_since
        )

    async def _fan_out_from(
        self,
        campaign: CompiledCampaign,
        event: common_pb2.Event,
        after: str,
        keepalive: Keepalive,
        spent: dict[str, float],
    ) -> int:
        """One pass of a fan-out from the cursor ``after``, at one revision of the campaign.

        Raises ``CampaignChanged`` (carrying what it sent) when the campaign changed.
        """
        trigger = Trigger.of(event)
        sent = 0
        sending: asyncio.Task[int] | None = None
        clock = asyncio.get_running_loop().time
        mark = clock()

        def lap(phase: str) -> None:
            nonlocal mark
            now = clock()
            spent[phase] += now - mark
            mark = now

        # A pipeline: batch k+1 is rendered while batch k is recorded and batch k-1 is sent.
        # Ledger writes stay strictly in order (each advances the resumable cursor).
        recording: asyncio.Task[list[Owned]] | None = None

        async def sent_previous() -> None:
            nonlocal sent, sending
            if sending is not None:
                sent += await sending
                sending = None

        async def hand_over(record: asyncio.Task[list[Owned]]) -> None:
            nonlocal sending
            owned = await record
            lap("record")
            await sent_previous()
            sending = asyncio.create_task(self.send(owned))
            lap("send_wait")

        try:
            async with aclosing(self._audience_batches(campaign, event, after)) as batches:
                async for batch in batches:
                    lap("audience")
                    profiles = await self.repository.profiles(batch)
                    lap("profiles")
                    items = [(campaign, trigger, profiles[c], "") for c in batch if c in profiles]
                    planned = [p for deliveries in await self._plan(items) for p in deliveries]
                    lap("render")
                    if recording is not None:
                        await hand_over(recording)
                        recording = None
                    recording = asyncio.create_task(
                        self.repository.record(
                            campaign.campaign_id,
                            event.event_id,
                            planned,
                            lease_s=self.lease_s,
                            cap_max=campaign.cap_max,
                            cap_period_s=campaign.cap_period_s,
                            fanout=True,
                            revision=campaign.revision,
                        )
                    )
                    await keepalive()
            if recording is not None:
                await hand_over(recording)
                recording = None
            await sent_previous()
            lap("send_wait")
        except AudienceUnresolvable as exc:
            log.warning(
                "system event audience cannot be evaluated",
                extra={"campaign_id": campaign.campaign_id, "event_id": event.event_id, "error": str(exc)},
            )
        except CampaignChanged as change:
            if sending is not None:
                finished = (await asyncio.gather(sending, return_exceptions=True))[0]
                sent += finished if isinstance(finished, int) else 0
                sending = None
            change.sent = sent
            raise
        finally:
            # Interrupted (an error of the audience stream or of a later batch): what was
            # recorded is ours to send, now rather than when its lease expires.
            if recording is not None:
                recorded = (await asyncio.gather(recording, return_exceptions=True))[0]
                if isinstance(recorded, list):
                    await asyncio.gather(self.send(recorded), return_exceptions=True)
            if sending is not None:
                await asyncio.gather(sending, return_exceptions=True)
        return sent

    async def _audience_batches(
        self, campaign: CompiledCampaign, event: common_pb2.Event, after: str
    ) -> AsyncGenerator[list[str], None]:
        size = self.fanout_batch
        if campaign.cap_max:
            # Each customer of a capped batch holds an advisory lock until commit; PostgreSQL's
            # shared lock table is small (max_locks_per_transaction x connections).
            size = min(size, CAPPED_BATCH)
        if campaign.audience is None:
            while True:
                batch = await self.repository.all_customers_after(after, size)
                if not batch:
                    return
                yield batch
                after = batch[-1]
        else:
            async for chunk in self.audience.stream(
                campaign.audience, event.context, event.occurred_at, after, size
            ):
                for start in range(0, len(chunk), size):
                    yield chunk[start : start + size]

    # --- sending ---

    async def send(self, owned: Sequence[Owned]) -> int:
        """Send the deliveries this worker holds and record the outcomes; returns how many were sent."""
        if not owned:
            return 0
        bulk: dict[int, list[Owned]] = defaultdict(list)
        single: list[Owned] = []
        for item in owned:
            (bulk[item.channel] if hasattr(self.channels[item.channel], "send_many") else single).append(item)
        singles, batches = await asyncio.gather(
            asyncio.gather(*(self._send_one(o) for o in single)),
            asyncio.gather(*(self._send_many(c, items) for c, items in bulk.items())),
        )
        outcomes: list[Outcome] = list(singles)
        for batch in batches:
            outcomes += batch
        await faults.point("campaigns.after_send")
        await self.repository.mark(outcomes)
        await self._forget_erased(owned)
        return sum(1 for o in outcomes if o.status == SENT)

    async def _forget_erased(self, owned: Sequence[Owned]) -> None:
        """Remove the message files of deliveries whose customer was erased while they were sent."""
        sinks = {id(c): c for o in owned if isinstance(c := self.channels[o.channel], FileSink)}
        if not sinks:
            return
        written = [o.delivery_id for o in owned if isinstance(self.channels[o.channel], FileSink)]
        missing = await self.repository.missing_deliveries(written)
        if missing:
            for sink in sinks.values():
                await asyncio.to_thread(sink.forget, missing)

    async def _send_many(self, channel: int, owned: Sequence[Owned]) -> list[Outcome]:
        """One call for many messages, for channels that can (the file sink: writes off the event loop)."""
        messages = [Message.from_json(o.delivery_id, o.channel, o.message) for o in owned]
        errors = await self.channels[channel].send_many(messages)  # type: ignore[attr-defined]
        outcomes = []
        for item, error in zip(owned, errors, strict=True):
            if error is None:
                outcomes.append(Outcome(item.customer_id, item.delivery_id, SENT, "", 1))
            elif item.attempts + 1 >= self.max_calls:
                outcomes.append(
                    Outcome(
                        item.customer_id, item.delivery_id, FAILED, f"provider unavailable: {error}"[:1000], 1
                    )
                )
            else:
                retry = min(60.0, self.retry_base_s * 2 ** (item.attempts + 1))
                outcomes.append(
                    Outcome(
                        item.customer_id, item.delivery_id, PENDING, f"retrying: {error}"[:1000], 1, retry
                    )
                )
        return outcomes

    async def _send_one(self, owned: Owned) -> Outcome:
        message = Message.from_json(owned.delivery_id, owned.channel, owned.message)
        channel = self.channels[owned.channel]
        calls = 0

        async def call() -> None:
            nonlocal calls
            calls += 1
            await channel.send(message)

        async with self._send_limit:
            try:
                await with_retries(call, self.send_attempts, self.retry_base_s)
            except PermanentError as exc:
                return Outcome(owned.customer_id, owned.delivery_id, FAILED, f"provider: {exc}"[:1000], calls)
            except TransientError as exc:
                if owned.attempts + calls >= self.max_calls:
                    return Outcome(
                        owned.customer_id,
                        owned.delivery_id,
                        FAILED,
                        f"provider unavailable: {exc}"[:1000],
                        calls,
                    )
                retry = min(60.0, self.retry_base_s * 2 ** (owned.attempts + calls))
                return Outcome(
                    owned.customer_id, owned.delivery_id, PENDING, f"retrying: {exc}"[:1000], calls, retry
                )
            except Exception as exc:
                log.exception("channel failed", extra={"delivery_id": owned.delivery_id})
                return Outcome(
                    owned.customer_id,
                    owned.delivery_id,
                    PENDING,
                    f"retrying: {type(exc).__name__}",
                    calls,
                    self.lease_s,
                )
        return Outcome(owned.customer_id, owned.delivery_id, SENT, "", calls)

    async def recover(self, limit: int = 500) -> int:
        """Send pending deliveries whose sender crashed or whose provider was down; returns how many."""
        total = 0
        while True:
            owned = await self.repository.take_over_stale(limit, self.lease_s)
            if not owned:
                return total
            total += len(owned)
            await self.send(owned)
            if len(owned) < limit:
                return total
