"""The field masks of every update RPC (AIP-134): which fields a request changes.

``read`` checks a request's ``update_mask`` against the fields the RPC lets a
client change; ``merge`` applies the masked fields of the request's resource
to the stored one. Only top-level fields are named (no ``a.b`` paths): every
resource of Eventline is changed a whole field at a time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from eventline_shared.errors import FieldViolation, quote

NAME_THE_FIELDS = "name the fields to change"
"""The violation of an empty mask where the RPC requires one."""


@dataclass(frozen=True)
class Mask:
    """The fields a request changes, or why its mask is refused."""

    paths: frozenset[str]
    """The fields to change, each one of the RPC's updatable fields."""
    violations: list[FieldViolation]
    """Every path that is not an updatable field (``update_mask.paths[i]``), or the empty mask
    of an RPC that requires one (``update_mask``); ``paths`` holds only the good paths."""


def read(
    mask: field_mask_pb2.FieldMask,
    updatable: Collection[str],
    *,
    when_empty: Iterable[str] | None,
    field: str = "update_mask",
) -> Mask:
    """The paths of ``mask``, checked against ``updatable``.

    ``when_empty`` is what an empty mask means, as the RPC documents it (for
    example every updatable field); None when the RPC requires a mask. The
    caller adds the violations to its own, so one reply lists every problem.
    """
    if not mask.paths:
        if when_empty is None:
            return Mask(frozenset(), [FieldViolation(field, NAME_THE_FIELDS)])
        return Mask(frozenset(when_empty), [])
    allowed = ", ".join(sorted(updatable))
    violations = [
        FieldViolation(f"{field}.paths[{i}]", f"{quote(path)} is not a field that can be changed: {allowed}")
        for i, path in enumerate(mask.paths)
        if path not in updatable
    ]
    return Mask(frozenset(p for p in mask.paths if p in updatable), violations)


def merge(source: Message, target: Message, paths: Iterable[str]) -> None:
    """Set each field of ``paths`` in ``target`` to its value in ``source``.

    A whole field is replaced: a repeated or map field by the source's
    entries, a message field by the source's message (cleared when the source
    leaves it unset), a scalar by its value. ``paths`` are fields of ``target``: the
    ``paths`` of ``read``, once its violations are refused.
    """
    fields = target.DESCRIPTOR.fields_by_name
    for path in paths:
        descriptor = fields[path]
        if descriptor.is_repeated:  # repeated and map fields alike
            target.ClearField(path)
            getattr(target, path).MergeFrom(getattr(source, path))
        elif descriptor.has_presence and not source.HasField(path):
            target.ClearField(path)
        elif descriptor.message_type is not None:
            getattr(target, path).CopyFrom(getattr(source, path))
        else:
            setattr(target, path, getattr(source, path))
