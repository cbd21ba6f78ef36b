"""Scenario 16 for CampaignService: fuzzed requests to every RPC get clean errors, never INTERNAL.

Hostile campaign ids, triggers, predicates, audiences (reusing the segmentation fuzz strategies),
templates with syntax errors and sandbox attacks, frequency caps, paging; a refused write leaves the
``campaigns`` table as it was.
"""

from __future__ import annotations

import grpc
from eventline.campaigns.v1 import campaigns_pb2 as pb
from google.protobuf import duration_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tests.fuzzing import (
    CLEAN,
    bindings,
    codes,
    enum_numbers,
    filters,
    page_sizes,
    page_tokens,
    plausible_filters,
    plausible_predicates,
    predicates,
)

WRITE_CLEAN = CLEAN | {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION}
STATE_CLEAN = CLEAN | {grpc.StatusCode.FAILED_PRECONDITION}

templates = st.one_of(
    st.sampled_from(
        [
            "{{ ",
            "{% for %}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ 'x'|attr('format') }}",
            "{% for i in range(10**9) %}x{% endfor %}",
            "{{ customer.email }}",
            "{{ event.context['item-id'] }}",
            "{{ 9**9**9 }}",
            "\x00",
            "x" * 100_000,
            "",
        ]
    ),
    st.text(max_size=40),
)
actions = st.one_of(
    st.builds(
        pb.Action,
        email=st.builds(pb.EmailAction, subject=templates, html_body=templates, text_body=templates),
    ),
    st.builds(pb.Action, sms=st.builds(pb.SmsAction, text=templates)),
    st.builds(
        pb.Action,
        push=st.builds(
            pb.PushAction, title=templates, body=templates, data=st.dictionaries(codes, templates, max_size=3)
        ),
    ),
    st.just(pb.Action()),
)
triggers = st.one_of(
    st.builds(
        pb.Trigger,
        customer_event=st.builds(
            pb.CustomerEventTrigger, event_name=codes, context_predicates=st.lists(predicates, max_size=3)
        ),
    ),
    st.builds(
        pb.Trigger,
        system_event=st.builds(
            pb.SystemEventTrigger, event_name=codes, context_predicates=st.lists(predicates, max_size=3)
        ),
    ),
    st.just(pb.Trigger()),
)
durations = st.builds(
    duration_pb2.Duration,
    # Up to int64: 1e14 s overflowed ToTimedelta into INTERNAL (issue 10, item 9).
    seconds=st.one_of(st.integers(-(2**40), 2**40), st.integers(-5, 10**6), st.integers(-(2**63), 2**63 - 1)),
    nanos=st.integers(-999_999_999, 999_999_999),
)
caps = st.builds(
    pb.FrequencyCap, max_sends=st.integers(-(2**31), 2**31 - 1), period=st.one_of(st.none(), durations)
)
campaign_ids = st.one_of(st.sampled_from(["camp-1", "camp_1", "", "x\x00"]), codes)
usable_texts = st.one_of(
    st.text(st.characters(blacklist_characters="{}%#\x00", codec="utf-8"), min_size=1, max_size=40),
    st.sampled_from(["Hi {{ customer.email }}", "{{ client.eventContext['item-id'] }}", "{{ '{{' }}"]),
)
plausible_campaigns = st.builds(
    pb.Campaign,
    display_name=st.text(min_size=1, max_size=30),
    trigger=st.builds(
        pb.Trigger,
        customer_event=st.builds(
            pb.CustomerEventTrigger,
            event_name=st.sampled_from(["Viewed", "PasswordRecoveryRequested"]),
            context_predicates=st.one_of(st.just([]), st.lists(plausible_predicates, max_size=1)),
        ),
    ),
    audience=st.one_of(st.none(), plausible_filters),
    actions=st.lists(
        st.builds(pb.Action, email=st.builds(pb.EmailAction, subject=usable_texts, text_body=usable_texts)),
        min_size=1,
        max_size=1,
    ),
    frequency_cap=st.one_of(
        st.none(),
        caps,
        st.builds(
            pb.FrequencyCap,
            max_sends=st.integers(1, 2**31 - 1),
            period=st.builds(duration_pb2.Duration, seconds=st.integers(1, 366 * 86400)),
        ),
    ),
)
hostile_campaigns = st.builds(
    pb.Campaign,
    campaign_id=campaign_ids,
    display_name=st.one_of(st.text(max_size=30), st.just("d" * 5000)),
    state=enum_numbers,
    trigger=st.one_of(st.none(), triggers),
    audience=st.one_of(st.none(), filters),
    actions=st.lists(actions, max_size=3),
    frequency_cap=st.one_of(st.none(), caps),
)
campaigns_messages = st.one_of(hostile_campaigns, plausible_campaigns)


@fuzzing.fuzzed
@given(
    campaign=campaigns_messages,
    campaign_id=st.one_of(st.just(""), campaign_ids),
    update=campaigns_messages,
    mask=st.lists(
        st.one_of(
            st.sampled_from(
                ["display_name", "trigger", "audience", "actions", "frequency_cap", "state", "campaign_id"]
            ),
            codes,
        ),
        max_size=3,
    ),
    page_size=page_sizes,
    page_token=page_tokens,
    states=st.lists(enum_numbers, max_size=3),
    customer_id=codes,
    context=bindings,
    lifecycle=st.lists(st.sampled_from(["activate", "pause", "archive"]), max_size=3),
)
async def test_fuzzed_campaign_requests_are_clean_and_all_or_nothing(  # type: ignore[no-untyped-def]
    campaigns,
    db,
    campaign,
    campaign_id,
    update,
    mask,
    page_size,
    page_token,
    states,
    customer_id,
    context,
    lifecycle,
):
    """Every CampaignService RPC answers or refuses cleanly; a refused write changes no campaign row."""

    async def rows():  # type: ignore[no-untyped-def]
        return await db.fetch("SELECT * FROM campaigns ORDER BY campaign_id")

    target = await fuzzing.create_get_update(
        campaigns, pb, "Campaign", campaign, campaign_id, update, mask, rows, WRITE_CLEAN
    )
    for step in lifecycle:
        call, request = {
            "activate": (campaigns.ActivateCampaign, pb.ActivateCampaignRequest),
            "pause": (campaigns.PauseCampaign, pb.PauseCampaignRequest),
            "archive": (campaigns.ArchiveCampaign, pb.ArchiveCampaignRequest),
        }[step]
        await fuzzing.all_or_nothing(call, request(campaign_id=target), rows, STATE_CLEAN)
    await fuzzing.answer_or_refuse(
        campaigns.PreviewMessage,
        pb.PreviewMessageRequest(campaign_id=target, customer_id=customer_id, context=context),
        STATE_CLEAN,
    )
    await fuzzing.answer_or_refuse(
        campaigns.ListCampaigns,
        pb.ListCampaignsRequest(page_size=page_size, page_token=page_token, states=states),
    )
    for parent in ({"campaign_id": target}, {"customer_id": customer_id}, {"event_id": customer_id}, {}):
        await fuzzing.answer_or_refuse(
            campaigns.ListDeliveries,
            pb.ListDeliveriesRequest(page_size=page_size, page_token=page_token, **parent),
        )
    await fuzzing.answer_or_refuse(campaigns.GetCampaignStats, pb.GetCampaignStatsRequest(campaign_id=target))


channel_caps = st.builds(
    pb.ChannelCap,
    channel=enum_numbers,
    max_sends=st.integers(-(2**31), 2**31 - 1),
    window=st.one_of(st.none(), durations),
)
addresses = st.one_of(
    st.sampled_from(["a@example.com", "+15550001111", "token", "a@@b", "", " ", "x\x00", "a" * 5000]), codes
)


@fuzzing.fuzzed
@given(
    caps=st.lists(channel_caps, max_size=4),
    campaign=campaigns_messages,
    channel=enum_numbers,
    address=addresses,
    customer_id=codes,
    step_id=st.one_of(st.just(""), codes),
    context=bindings,
)
async def test_fuzzed_channel_caps_and_test_sends_are_clean(  # type: ignore[no-untyped-def]
    campaigns, db, caps, campaign, channel, address, customer_id, step_id, context
):
    """SetChannelCaps and SendTestMessage answer or refuse cleanly; a refused SetChannelCaps changes no cap."""

    async def rows():  # type: ignore[no-untyped-def]
        return await db.fetch("SELECT channel, max_sends, window_s FROM channel_caps ORDER BY channel")

    await fuzzing.all_or_nothing(campaigns.SetChannelCaps, pb.SetChannelCapsRequest(caps=caps), rows, CLEAN)
    await fuzzing.answer_or_refuse(campaigns.GetChannelCaps, pb.GetChannelCapsRequest())
    created = await fuzzing.answer_or_refuse(
        campaigns.CreateCampaign, pb.CreateCampaignRequest(campaign=campaign)
    )
    await fuzzing.answer_or_refuse(
        campaigns.SendTestMessage,
        pb.SendTestMessageRequest(
            campaign_id=created.campaign.campaign_id if created else customer_id,
            step_id=step_id,
            channel=channel,
            address=address,
            sample_customer_id=customer_id,
            context=context,
        ),
        WRITE_CLEAN,
    )
