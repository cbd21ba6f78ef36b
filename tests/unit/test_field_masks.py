"""The one field-mask helper of every update RPC (libs/eventline_shared/field_masks.py)."""

from __future__ import annotations

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from google.protobuf import field_mask_pb2

from eventline_shared import field_masks
from eventline_shared.errors import FieldViolation

UPDATABLE = ("email", "phone", "attributes")


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=paths)


def test_an_empty_mask_means_what_the_rpc_documents() -> None:
    assert field_masks.read(mask(), UPDATABLE, when_empty=UPDATABLE) == field_masks.Mask(
        frozenset(UPDATABLE), []
    )
    required = field_masks.read(mask(), UPDATABLE, when_empty=None)
    assert required.paths == frozenset()
    assert required.violations == [FieldViolation("update_mask", field_masks.NAME_THE_FIELDS)]


def test_each_unknown_path_is_named_by_its_index_and_the_good_ones_are_kept() -> None:
    read = field_masks.read(mask("email", "nickname", "phone", "customer_id"), UPDATABLE, when_empty=None)
    assert read.paths == {"email", "phone"}
    assert [v.field for v in read.violations] == ["update_mask.paths[1]", "update_mask.paths[3]"]
    assert read.violations[0].description == (
        "'nickname' is not a field that can be changed: attributes, email, phone"
    )
    nested = field_masks.read(mask("x" * 100), UPDATABLE, when_empty=None, field="request.update_mask")
    assert nested.violations[0].field == "request.update_mask.paths[0]"
    assert len(nested.violations[0].description) < 200  # a long path is quoted short


def test_merge_replaces_whole_fields_and_only_those_named() -> None:
    stored = campaigns_pb2.Campaign(
        campaign_id="c",
        display_name="Old",
        transactional=True,
        trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="A")),
        frequency_cap=campaigns_pb2.FrequencyCap(max_sends=3),
        actions=[campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="one"))] * 2,
    )
    sent = campaigns_pb2.Campaign(
        display_name="New",
        actions=[campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="two"))],
        trigger=campaigns_pb2.Trigger(system_event=campaigns_pb2.SystemEventTrigger(event_name="B")),
    )
    merged = campaigns_pb2.Campaign()
    merged.CopyFrom(stored)
    field_masks.merge(sent, merged, ["display_name", "actions", "frequency_cap", "transactional"])
    assert merged.display_name == "New" and not merged.transactional
    assert [a.sms.text for a in merged.actions] == ["two"]
    assert not merged.HasField("frequency_cap")  # unset in the request: cleared
    assert merged.trigger == stored.trigger  # not named: kept
    assert merged.campaign_id == "c"
    field_masks.merge(sent, merged, ["trigger"])
    assert merged.trigger == sent.trigger


def test_merge_replaces_a_map_field() -> None:
    stored = common_pb2.Customer(attributes={"a": common_pb2.Value(string_value="1")})
    field_masks.merge(
        common_pb2.Customer(attributes={"b": common_pb2.Value(string_value="2")}), stored, ["attributes"]
    )
    assert dict(stored.attributes) == {"b": common_pb2.Value(string_value="2")}
