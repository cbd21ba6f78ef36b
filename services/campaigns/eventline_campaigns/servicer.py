"""CampaignService: validate the request, call the domain, map the result to the reply."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from eventline_campaigns import validation
from eventline_campaigns.campaign_admin import (
    ACTIVATE,
    ARCHIVE,
    PAUSE,
    UPDATABLE,
    CampaignAdmin,
    Transition,
    to_proto,
)
from eventline_campaigns.journeys import journey_stats
from eventline_campaigns.model import (
    ACTIVE,
    ARCHIVED,
    DRAFT,
    FAILED,
    PAUSED,
    PENDING,
    SENT,
    SKIPPED,
    SUPPRESSIBLE,
    ChannelCap,
    normal_address,
)
from eventline_campaigns.planning import TEMPLATE_FAILED
from eventline_campaigns.repository import (
    DeliveryRow,
    Recorded,
    Replayed,
    Report,
    ReportRow,
    SuppressionRepository,
    SuppressionRow,
)
from eventline_campaigns.settings import DEFAULT_SUPPRESSION, SuppressionPolicy
from eventline_campaigns.test_sends import TestSends
from eventline_shared import field_masks, paging
from eventline_shared.errors import (
    AlreadyExists,
    FieldViolation,
    NotFound,
    ResourceExhausted,
    quote,
    raise_if_any,
)
from eventline_shared.paging import PageTokens
from eventline_shared.server.grpc_server import Context
from eventline_shared.values import datetime_to_timestamp, timestamp_to_datetime

STATUS_FIELDS = {PENDING: "pending", SENT: "sent", FAILED: "failed", SKIPPED: "skipped"}
"""GetCampaignStats' count of each delivery status."""


REPORTS_PER_DELIVERY = 20
"""The most provider reports a Delivery carries (the first ones)."""

MAX_REPORTS = 1000
"""The most reports one RecordDeliveryEvents call may carry."""


def _report(row: ReportRow) -> campaigns_pb2.DeliveryEvent:
    return campaigns_pb2.DeliveryEvent(
        delivery_id=str(row.delivery_id),
        kind=row.kind,
        occur_time=datetime_to_timestamp(row.occurred_at),
        detail=row.detail,
        provider_event_id=row.provider_event_id or "",
        recipient=row.address,
    )


def _suppression(row: SuppressionRow) -> campaigns_pb2.Suppression:
    return campaigns_pb2.Suppression(
        channel=row.channel,
        address=row.address,
        reason=row.reason,
        detail=row.detail,
        delivery_id=str(row.delivery_id) if row.delivery_id is not None else "",
        create_time=datetime_to_timestamp(row.created_at),
    )


def _channel_cap(cap: ChannelCap) -> campaigns_pb2.ChannelCap:
    reply = campaigns_pb2.ChannelCap(channel=cap.channel, max_sends=cap.max_sends)
    reply.window.FromTimedelta(dt.timedelta(seconds=cap.window_s))
    return reply


def _delivery(row: DeliveryRow, reports: list[ReportRow] | None = None) -> campaigns_pb2.Delivery:
    return campaigns_pb2.Delivery(
        events=[_report(r) for r in reports or []],
        delivery_id=str(row.delivery_id),
        campaign_id=row.campaign_id,
        event_id=row.event_id,
        customer_id=row.customer_id,
        channel=row.channel,
        status=row.status,
        reason=row.reason,
        attempts=row.attempts,
        create_time=datetime_to_timestamp(row.created_at),
        update_time=datetime_to_timestamp(row.updated_at),
    )


class CampaignServicer(campaigns_pb2_grpc.CampaignServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        campaigns: CampaignAdmin,
        tokens: PageTokens,
        test_sends: TestSends,
        suppression: SuppressionPolicy = DEFAULT_SUPPRESSION,
    ) -> None:
        self.campaigns = campaigns
        self.test_sends = test_sends
        self.repository = campaigns.repository
        self.suppressions = SuppressionRepository(campaigns.repository.pool)
        self.suppression = suppression
        self.tokens = tokens

    async def CreateCampaign(
        self, request: campaigns_pb2.CreateCampaignRequest, context: Context
    ) -> campaigns_pb2.CreateCampaignResponse:
        violations = validation.check_campaign(request.campaign, "campaign", limits=self.campaigns.limits)
        campaign_id = request.campaign_id or request.campaign.campaign_id or uuid.uuid4().hex
        bad_id = validation.check_campaign_id(campaign_id, "campaign_id")
        if bad_id:
            violations.append(bad_id)
        raise_if_any(violations)
        row = await self.campaigns.create(campaign_id, request.campaign)
        return campaigns_pb2.CreateCampaignResponse(campaign=to_proto(row))

    async def GetCampaign(
        self, request: campaigns_pb2.GetCampaignRequest, context: Context
    ) -> campaigns_pb2.GetCampaignResponse:
        return campaigns_pb2.GetCampaignResponse(
            campaign=to_proto(await self.campaigns.require(request.campaign_id))
        )

    async def ListCampaigns(
        self, request: campaigns_pb2.ListCampaignsRequest, context: Context
    ) -> campaigns_pb2.ListCampaignsResponse:
        states = [int(state) for state in request.states]
        raise_if_any(
            FieldViolation(f"states[{i}]", "must be a campaign state")
            for i, state in enumerate(states)
            if state not in (DRAFT, ACTIVE, PAUSED, ARCHIVED)
        )
        size = paging.page_size(request.page_size, 50, 500)
        bound_to = paging.scope(request)
        after = None
        if request.page_token:
            position = self.tokens.read(request.page_token, "ListCampaigns", bound_to, (dt.datetime, str))
            after = (position.instant(0), position.text(1))
        rows = await self.repository.list_campaigns(size + 1, after, states, paging.READ_BYTES)
        page = paging.fill(rows, size, lambda r: paging.message_bytes(to_proto(r)))
        next_token = ""
        if len(page) < len(rows):
            next_token = self.tokens.issue(
                "ListCampaigns", bound_to, (page[-1].created_at, page[-1].campaign_id)
            )
        return campaigns_pb2.ListCampaignsResponse(
            campaigns=[to_proto(r) for r in page], next_page_token=next_token
        )

    async def UpdateCampaign(
        self, request: campaigns_pb2.UpdateCampaignRequest, context: Context
    ) -> campaigns_pb2.UpdateCampaignResponse:
        mask = field_masks.read(request.update_mask, UPDATABLE, when_empty=None)
        raise_if_any(mask.violations)
        row = await self.campaigns.update(request.campaign, mask.paths)
        return campaigns_pb2.UpdateCampaignResponse(campaign=to_proto(row))

    async def _move(self, campaign_id: str, transition: Transition) -> campaigns_pb2.Campaign:
        return to_proto(await self.campaigns.move(campaign_id, transition))

    async def ActivateCampaign(
        self, request: campaigns_pb2.ActivateCampaignRequest, context: Context
    ) -> campaigns_pb2.ActivateCampaignResponse:
        return campaigns_pb2.ActivateCampaignResponse(
            campaign=await self._move(request.campaign_id, ACTIVATE)
        )

    async def PauseCampaign(
        self, request: campaigns_pb2.PauseCampaignRequest, context: Context
    ) -> campaigns_pb2.PauseCampaignResponse:
        return campaigns_pb2.PauseCampaignResponse(campaign=await self._move(request.campaign_id, PAUSE))

    async def ArchiveCampaign(
        self, request: campaigns_pb2.ArchiveCampaignRequest, context: Context
    ) -> campaigns_pb2.ArchiveCampaignResponse:
        return campaigns_pb2.ArchiveCampaignResponse(campaign=await self._move(request.campaign_id, ARCHIVE))

    async def PreviewMessage(
        self, request: campaigns_pb2.PreviewMessageRequest, context: Context
    ) -> campaigns_pb2.PreviewMessageResponse:
        violations = validation.check_preview(request)
        bad_id = validation.check_campaign_id(request.campaign_id, "campaign_id")
        raise_if_any([*([bad_id] if bad_id else []), *violations])
        planned = await self.campaigns.preview(
            request.campaign_id, request.customer_id, request.context, request.step_id
        )
        messages = []
        for p in planned:
            if p.message is None:
                error = p.reason.removeprefix(TEMPLATE_FAILED)
                messages.append(campaigns_pb2.RenderedMessage(channel=p.channel, error=error))
                continue
            messages.append(
                campaigns_pb2.RenderedMessage(
                    channel=p.channel,
                    subject=p.message.subject,
                    html_body=p.message.html,
                    text_body=p.message.text,
                    data=p.message.data,
                )
            )
        return campaigns_pb2.PreviewMessageResponse(messages=messages)

    async def ListDeliveries(
        self, request: campaigns_pb2.ListDeliveriesRequest, context: Context
    ) -> campaigns_pb2.ListDeliveriesResponse:
        parent = request.WhichOneof("parent")
        value = getattr(request, parent) if parent else ""
        raise_if_any(v for v in [validation.check_parent(parent, value)] if v)
        assert parent is not None
        size = paging.page_size(request.page_size, 50, 1000)
        bound_to = paging.scope(request)
        before = None
        if request.page_token:
            before = self.tokens.read(request.page_token, "ListDeliveries", bound_to, (int,)).number(0)
        rows = await self.repository.list_deliveries(parent, value, before, size + 1)
        reports = await self.suppressions.reports([r.delivery_id for r in rows], REPORTS_PER_DELIVERY)
        deliveries = [_delivery(r, reports.get(r.delivery_id, [])) for r in rows]
        page = paging.fill(deliveries, size, paging.message_bytes)
        next_token = ""
        if len(page) < len(deliveries):
            next_token = self.tokens.issue("ListDeliveries", bound_to, (int(page[-1].delivery_id),))
        return campaigns_pb2.ListDeliveriesResponse(deliveries=page, next_page_token=next_token)

    async def GetCampaignStats(
        self, request: campaigns_pb2.GetCampaignStatsRequest, context: Context
    ) -> campaigns_pb2.GetCampaignStatsResponse:
        await self.campaigns.require(request.campaign_id)
        reply = campaigns_pb2.GetCampaignStatsResponse()
        for status, reason, count in await self.repository.stats(request.campaign_id):
            name = STATUS_FIELDS.get(status)
            if name:
                setattr(reply, name, getattr(reply, name) + count)
            if reason and status in (FAILED, SKIPPED):
                reply.reasons[reason] = reply.reasons.get(reason, 0) + count
        reported = await self.suppressions.report_stats(request.campaign_id)
        reply.delivered = reported.get(campaigns_pb2.DELIVERY_EVENT_KIND_DELIVERED, 0)
        reply.bounced = reported.get(campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_HARD, 0) + reported.get(
            campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_SOFT, 0
        )
        reply.complained = reported.get(campaigns_pb2.DELIVERY_EVENT_KIND_COMPLAINED, 0)
        reply.opened = reported.get(campaigns_pb2.DELIVERY_EVENT_KIND_OPENED, 0)
        reply.clicked = reported.get(campaigns_pb2.DELIVERY_EVENT_KIND_CLICKED, 0)
        return reply

    # --- caps across campaigns and test sends ---

    async def GetChannelCaps(
        self, request: campaigns_pb2.GetChannelCapsRequest, context: Context
    ) -> campaigns_pb2.GetChannelCapsResponse:
        caps = await self.repository.channel_caps()
        return campaigns_pb2.GetChannelCapsResponse(caps=[_channel_cap(c) for c in caps])

    async def SetChannelCaps(
        self, request: campaigns_pb2.SetChannelCapsRequest, context: Context
    ) -> campaigns_pb2.SetChannelCapsResponse:
        caps, violations = validation.check_channel_caps(list(request.caps), "caps")
        raise_if_any(violations)
        stored = await self.repository.set_channel_caps(caps)
        return campaigns_pb2.SetChannelCapsResponse(caps=[_channel_cap(c) for c in stored])

    async def SendTestMessage(
        self, request: campaigns_pb2.SendTestMessageRequest, context: Context
    ) -> campaigns_pb2.SendTestMessageResponse:
        raise_if_any(validation.check_test_send(request))
        sent = await self.test_sends.send(
            request.campaign_id,
            request.channel,
            request.address,
            request.sample_customer_id,
            request.context,
            request.step_id,
        )
        return campaigns_pb2.SendTestMessageResponse(
            test_delivery=campaigns_pb2.TestDelivery(
                test_delivery_id=str(sent.test_delivery_id),
                campaign_id=sent.campaign_id,
                step_id=sent.step_id,
                channel=sent.channel,
                address=sent.address,
                sample_customer_id=sent.sample_customer_id,
                status=sent.status,
                reason=sent.reason,
                create_time=datetime_to_timestamp(sent.created_at),
            )
        )

    async def GetJourneyStats(
        self, request: campaigns_pb2.GetJourneyStatsRequest, context: Context
    ) -> campaigns_pb2.GetJourneyStatsResponse:
        row = await self.campaigns.require(request.campaign_id)
        assert self.campaigns.journeys is not None
        return await journey_stats(self.campaigns.journeys, row)

    # --- suppression and provider reports ---

    async def ListSuppressions(
        self, request: campaigns_pb2.ListSuppressionsRequest, context: Context
    ) -> campaigns_pb2.ListSuppressionsResponse:
        channel = int(request.channel)
        if channel not in (campaigns_pb2.CHANNEL_UNSPECIFIED, *SUPPRESSIBLE):
            raise_if_any([FieldViolation("channel", "must be CHANNEL_EMAIL, CHANNEL_SMS or unspecified")])
        size = paging.page_size(request.page_size, 50, 1000)
        bound_to = paging.scope(request)
        before = None
        if request.page_token:
            position = self.tokens.read(
                request.page_token, "ListSuppressions", bound_to, (dt.datetime, int, str)
            )
            before = (position.instant(0), position.number(1), position.text(2))
        rows = await self.suppressions.page(channel, before, size + 1)
        page = paging.fill(rows, size, lambda r: paging.message_bytes(_suppression(r)))
        next_token = ""
        if len(page) < len(rows):
            last = page[-1]
            next_token = self.tokens.issue(
                "ListSuppressions", bound_to, (last.created_at, last.channel, last.address)
            )
        return campaigns_pb2.ListSuppressionsResponse(
            suppressions=[_suppression(r) for r in page], next_page_token=next_token
        )

    async def CreateSuppression(
        self, request: campaigns_pb2.CreateSuppressionRequest, context: Context
    ) -> campaigns_pb2.CreateSuppressionResponse:
        given = request.suppression
        violations = validation.check_address(given.channel, given.address, "suppression.address")
        if len(given.detail) > 1000:
            violations.append(FieldViolation("suppression.detail", "at most 1,000 characters"))
        raise_if_any(violations)
        row = await self.suppressions.add(
            given.channel,
            normal_address(given.channel, given.address),
            campaigns_pb2.SUPPRESSION_REASON_MANUAL,
            given.detail,
        )
        return campaigns_pb2.CreateSuppressionResponse(suppression=_suppression(row))

    async def DeleteSuppression(
        self, request: campaigns_pb2.DeleteSuppressionRequest, context: Context
    ) -> campaigns_pb2.DeleteSuppressionResponse:
        raise_if_any(validation.check_address(request.channel, request.address, "address"))
        address = normal_address(request.channel, request.address)
        if not await self.suppressions.remove(request.channel, address):
            raise NotFound(f"{quote(address)} is not suppressed on that channel")
        return campaigns_pb2.DeleteSuppressionResponse()

    async def RecordDeliveryEvents(
        self, request: campaigns_pb2.RecordDeliveryEventsRequest, context: Context
    ) -> campaigns_pb2.RecordDeliveryEventsResponse:
        violations: list[FieldViolation] = []
        if request.requests:
            if request.events or request.request_key:
                violations.append(FieldViolation("events", "must be empty when requests are given"))
            if (
                sum(len(r.events) for r in request.requests) > MAX_REPORTS
                or len(request.requests) > MAX_REPORTS
            ):
                raise ResourceExhausted(
                    [FieldViolation("requests", f"at most {MAX_REPORTS:,} reports per call")]
                )
            gathered = [
                (_checked_reports(r.events, r.request_key, f"requests[{i}].", violations), r.request_key)
                for i, r in enumerate(request.requests)
            ]
            raise_if_any(violations)
            outcomes = [
                campaigns_pb2.ProviderRequestOutcome(replayed=True)
                if recorded is None
                else campaigns_pb2.ProviderRequestOutcome(
                    recorded=recorded.recorded,
                    unmatched=recorded.unmatched,
                    duplicates=recorded.duplicates,
                    suppressed=recorded.suppressed,
                )
                for recorded in await self.suppressions.record_requests(gathered, **self._suppression_rules())
            ]
            return campaigns_pb2.RecordDeliveryEventsResponse(
                recorded=sum(o.recorded for o in outcomes),
                unmatched=sum(o.unmatched for o in outcomes),
                duplicates=sum(o.duplicates for o in outcomes),
                suppressed=sum(o.suppressed for o in outcomes),
                outcomes=outcomes,
            )
        if len(request.events) > MAX_REPORTS:
            raise ResourceExhausted([FieldViolation("events", f"at most {MAX_REPORTS:,} reports per call")])
        reports = _checked_reports(request.events, request.request_key, "", violations)
        raise_if_any(violations)
        try:
            recorded = await self._record_reports(reports, request.request_key)
        except Replayed:
            raise AlreadyExists("this request was handled before (a replay); nothing was recorded") from None
        return campaigns_pb2.RecordDeliveryEventsResponse(
            recorded=recorded.recorded,
            unmatched=recorded.unmatched,
            duplicates=recorded.duplicates,
            suppressed=recorded.suppressed,
        )

    async def _record_reports(self, reports: list[Report], request_key: str) -> Recorded:
        return await self.suppressions.record_reports(
            reports, request_key=request_key, **self._suppression_rules()
        )

    def _suppression_rules(self) -> dict[str, Any]:
        """What suppresses an address: ``record_reports``' keyword arguments."""
        return {
            "soft_limit": self.suppression.soft_bounces,
            "soft_window_s": self.suppression.soft_bounce_window_s,
            "reasons": {
                campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_HARD: campaigns_pb2.SUPPRESSION_REASON_HARD_BOUNCE,
                campaigns_pb2.DELIVERY_EVENT_KIND_COMPLAINED: campaigns_pb2.SUPPRESSION_REASON_COMPLAINT,
            },
        }


def _checked_reports(
    events: Sequence[campaigns_pb2.DeliveryEvent],
    request_key: str,
    prefix: str,
    violations: list[FieldViolation],
) -> list[Report]:
    """The reports of one provider request; what is wrong with them goes to ``violations``
    (field paths under ``prefix``)."""
    if not events:
        violations.append(FieldViolation(f"{prefix}events", "at least one report is required"))
    if len(request_key) > 200:
        violations.append(FieldViolation(f"{prefix}request_key", "at most 200 characters"))
    reports = []
    for i, event in enumerate(events):
        field = f"{prefix}events[{i}]"
        if not event.delivery_id.isascii() or not event.delivery_id.isdigit() or len(event.delivery_id) > 18:
            violations.append(FieldViolation(f"{field}.delivery_id", "must be a delivery id (digits)"))
        if (
            event.kind not in campaigns_pb2.DeliveryEventKind.values()
            or event.kind == campaigns_pb2.DELIVERY_EVENT_KIND_UNSPECIFIED
        ):
            violations.append(FieldViolation(f"{field}.kind", "must be a delivery event kind"))
        for name, limit in (("detail", 1000), ("provider_event_id", 200), ("recipient", 320)):
            if len(getattr(event, name)) > limit:
                violations.append(FieldViolation(f"{field}.{name}", f"at most {limit:,} characters"))
        if violations:
            continue
        reports.append(
            Report(
                int(event.delivery_id),
                event.kind,
                timestamp_to_datetime(event.occur_time) if event.HasField("occur_time") else None,
                event.detail,
                event.provider_event_id or None,
                event.recipient,
            )
        )
    return reports
