"""Test sends: one campaign message, rendered for a sample customer, to an address the caller gives.

A test send goes through the channel's real provider (or the file sink), so a marketer
sees what customers will get, but it is no delivery: it is recorded in ``test_deliveries``
only, never in the ledger, the campaign's stats or the caps across campaigns. Its id comes
from the ledger's sequence, so the provider's idempotency key is never a delivery's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from eventline.common.v1 import common_pb2

from eventline_campaigns import validation
from eventline_campaigns.campaign_admin import CampaignAdmin
from eventline_campaigns.channels import PermanentError, TransientError, with_retries
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.model import (
    CAPPABLE,
    CHANNEL_WORDS,
    FAILED,
    MAX_REASON,
    SENT,
    SKIPPED,
    SUPPRESSIBLE,
    ChannelNumber,
    TestDelivery,
    normal_address,
)
from eventline_campaigns.planning import suppressed_reason
from eventline_campaigns.repository import TestDeliveryRepository
from eventline_shared.errors import FieldViolation, raise_if_any


class TestSends:
    """Renders and sends test messages (``SendTestMessage``) through the service's channels."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, admin: CampaignAdmin, delivery: Delivery) -> None:
        self.admin = admin
        self.delivery = delivery
        self.repository = TestDeliveryRepository(admin.repository.pool)

    async def send(
        self,
        campaign_id: str,
        channel: ChannelNumber,
        address: str,
        sample_customer_id: str,
        context: Mapping[str, common_pb2.Value],
        step_id: str = "",
    ) -> TestDelivery:
        """Send the campaign's message on ``channel`` (unspecified: its one message channel).

        NOT_FOUND for a missing campaign or sample customer; INVALID_ARGUMENT when the
        campaign has no message on the channel, or several and none is chosen, or when the
        address is not one of the channel's.
        """
        rendered = await self.admin.preview(campaign_id, sample_customer_id, context, step_id)
        offered = [p.channel for p in rendered if p.channel in CAPPABLE]
        if not channel:
            if len(offered) != 1:
                raise_if_any(
                    [FieldViolation("channel", "required: the campaign has messages on several channels")]
                    if offered
                    else [FieldViolation("campaign_id", "the campaign has no e-mail, SMS or push message")]
                )
            channel = offered[0]
        elif channel not in offered:
            raise_if_any([FieldViolation("channel", f"the campaign has no {CHANNEL_WORDS[channel]} message")])
        raise_if_any(validation.check_address(channel, address, "address", CAPPABLE))
        address = normal_address(channel, address)
        [planned] = [p for p in rendered if p.channel == channel]
        test_delivery_id, created_at = await self.repository.start(
            campaign_id, step_id, channel, address, sample_customer_id
        )
        status, reason = SENT, ""
        if planned.message is None:
            status, reason = FAILED, planned.reason[:MAX_REASON]  # "template: <error>"
        elif channel in SUPPRESSIBLE and (
            suppressed := await self.delivery.suppressions.suppressed([(channel, address)])
        ):
            status = SKIPPED
            reason = suppressed_reason(suppressed[(channel, address)])
        else:
            message = replace(planned.message, delivery_id=test_delivery_id, to=[address], unsubscribe=[])
            provider = self.delivery.channels[channel]
            try:
                await with_retries(
                    lambda: provider.send(message), self.delivery.send_attempts, self.delivery.retry_base_s
                )
            except (PermanentError, TransientError) as exc:
                status, reason = FAILED, f"provider: {exc}"[:MAX_REASON]
        await self.repository.finish(test_delivery_id, status, reason)
        return TestDelivery(
            test_delivery_id,
            campaign_id,
            step_id,
            channel,
            address,
            sample_customer_id,
            status,
            reason,
            created_at,
        )
