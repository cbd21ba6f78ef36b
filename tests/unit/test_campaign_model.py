"""Campaign planning, validation and provider signatures (trigger predicates: tests/unit/test_predicates.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg
from hypothesis import given, settings
from hypothesis import strategies as st

from eventline_campaigns.channels import FileSink, HttpChannel, signature
from eventline_campaigns.model import (
    EMAIL,
    FAILED,
    PENDING,
    SKIPPED,
    Message,
    Profile,
    Trigger,
    compile_campaign,
)
from eventline_campaigns.planning import plan
from eventline_campaigns.rendering import InlineRendering
from tests.support import value


def _campaign(**action: campaigns_pb2.EmailAction) -> campaigns_pb2.Campaign:
    return campaigns_pb2.Campaign(
        trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="E")),
        actions=[campaigns_pb2.Action(email=action["email"])],
    )


def _profile(**fields: object) -> Profile:
    base: dict[str, object] = dict(
        customer_id="c1",
        email="c1@example.com",
        phone="",
        push_tokens=[],
        attributes="{}",
        email_consent=1,
        sms_consent=0,
        push_consent=0,
    )
    base.update(fields)
    return Profile(**base)  # type: ignore[arg-type]


def _trigger(**context: common_pb2.Value) -> Trigger:
    event = common_pb2.Event(
        event_id="e1", customer_id="c1", name="E", kind=common_pb2.EVENT_KIND_CUSTOMER, context=context
    )
    return Trigger.of(event)


async def test_plan_skips_renders_or_fails_without_half_messages() -> None:
    spec = _campaign(email=campaigns_pb2.EmailAction(subject="S {{ client.eventContext.a }}", text_body="T"))
    campaign = compile_campaign("c", 1, spec, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    [[ok], [failed], [no_consent], [no_address]] = await plan(
        InlineRendering(),
        [
            (campaign, _trigger(a=value("x")), _profile(), ""),
            (campaign, _trigger(), _profile(), ""),
            (campaign, _trigger(a=value("x")), _profile(email_consent=2), ""),
            (campaign, _trigger(a=value("x")), _profile(email=""), ""),
        ],
    )
    assert ok.status == PENDING and ok.message is not None and ok.message.subject == "S x"
    assert failed.status == FAILED and failed.message is None and "'a'" in failed.reason
    assert (no_consent.status, no_consent.reason) == (SKIPPED, "no e-mail consent")
    assert (no_address.status, no_address.reason) == (SKIPPED, "no e-mail address")


def test_provider_signature_and_payload() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k", "1700000000", body) == "sha256=" + expected
    sms = Message(7, 2, ["+4915112345678"], text="hi")
    assert HttpChannel.payload(sms) == {
        "delivery_id": "7",
        "channel": "sms",
        "to": "+4915112345678",
        "text": "hi",
    }


async def test_file_sink_writes_a_readable_file_once_per_delivery(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sink = FileSink(str(tmp_path))
    message = Message(12, EMAIL, ["a@example.com"], "Blue kettle is back", "<p>x</p>", "Get it now")
    await sink.send(message)
    await sink.send(message)
    [written] = list(tmp_path.iterdir())
    text = written.read_text()
    assert "To: a@example.com" in text and "Subject: Blue kettle is back" in text and "Get it now" in text


_hostile = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["{{", "}}", "{%", "__class__", "'; DROP TABLE campaigns; --", "\x00", "{{ x|attr('y') }}", "-" * 70]
)


@settings(max_examples=300, deadline=None)
@given(
    name=_hostile,
    event_name=_hostile,
    field=_hostile,
    subject=_hostile,
    body=_hostile,
    data_key=_hostile,
    operator=st.integers(min_value=-1, max_value=14),
    max_sends=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_campaign_validation_never_crashes_on_hostile_input(
    name: str,
    event_name: str,
    field: str,
    subject: str,
    body: str,
    data_key: str,
    operator: int,
    max_sends: int,
) -> None:
    from eventline_campaigns.validation import check_campaign

    campaign = campaigns_pb2.Campaign(
        display_name=name,
        trigger=campaigns_pb2.Trigger(
            system_event=campaigns_pb2.SystemEventTrigger(
                event_name=event_name,
                context_predicates=[
                    seg.Predicate(field=field, operator=operator, value=seg.Operand(literal=value(body)))  # type: ignore[arg-type]
                ],
            )
        ),
        actions=[
            campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject=subject, html_body=body)),
            campaigns_pb2.Action(
                push=campaigns_pb2.PushAction(title=subject, body=body, data={data_key: body})
            ),
        ],
        frequency_cap=campaigns_pb2.FrequencyCap(max_sends=max_sends),
    )
    found = check_campaign(campaign, "campaign")
    assert all(v.field.startswith("campaign.") for v in found)
    if "\x00" in name or not name:
        assert any(v.field == "campaign.display_name" for v in found)


async def test_file_sink_writes_many_off_the_event_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    sink = FileSink(str(tmp_path / "out"), observer=lambda m: seen.append(m.delivery_id))
    messages = [Message(i, EMAIL, [f"c{i}@example.com"], f"S{i}", "", "body") for i in range(20)]
    assert await sink.send_many(messages) == [None] * 20
    assert len(list((tmp_path / "out").iterdir())) == 20 and seen == list(range(20))
    (tmp_path / "out").chmod(0o500)  # not writable: every message reports its error
    try:
        errors = await sink.send_many([Message(99, EMAIL, ["x@example.com"], "S", "", "b")])
    finally:
        (tmp_path / "out").chmod(0o700)
    assert errors[0] is None or "cannot write" in errors[0]  # root may write anyway
