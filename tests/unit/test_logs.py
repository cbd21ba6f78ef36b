"""JSON log lines, and grpc's own records made readable."""

from __future__ import annotations

import io
import json
import logging

from eventline_shared.observability import logs


def test_a_reply_after_the_call_ended_is_a_one_line_warning_naming_the_method() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("segmentation")
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    try:
        grpc_core = logging.getLogger("grpc._cython.cygrpc")
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            grpc_core.exception(
                "%s raised in core by servicer method [%s]",
                "ExecuteBatchError",
                "/eventline.segmentation.v1.SegmentationService/CountCustomers",
            )
        grpc_core.error("Unexpected [ValueError] raised by servicer method [/x.Y/Z]")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "warning"
    assert first["msg"] == "reply not sent: the call had already ended (client deadline or cancel)"
    assert first["method"] == "/eventline.segmentation.v1.SegmentationService/CountCustomers"
    assert "exc" not in first
    assert second["level"] == "error" and second["msg"].startswith("Unexpected [ValueError]")
