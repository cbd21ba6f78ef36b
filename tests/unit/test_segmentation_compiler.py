"""Unit tests of segmentation's SQL compiler (no sockets)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from eventline.common.v1 import common_pb2
from hypothesis import given
from hypothesis import strategies as st

from eventline_predicates import filters, periods
from eventline_segmentation import compiler
from tests.unit.test_predicates import sample_filter

UTC = dt.UTC


codes = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
# No lone surrogates: protobuf cannot hold them (a client cannot send them), so they only made
# the test fail when Hypothesis happened to draw one.
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)


@given(name=codes, code=codes, text=texts, ref=codes, bound=texts)
def test_sql_text_depends_only_on_the_shape_of_the_filter(
    name: str, code: str, text: str, ref: str, bound: str
) -> None:
    """Names, codes and values are parameters: hostile ones change nothing in the SQL text."""
    clock = periods.Clock(dt.datetime(2026, 11, 26, tzinfo=UTC), UTC)
    plain = filters.check(
        sample_filter("A", "x", "v", "r"), "filter", {"r": common_pb2.Value(string_value="b")}
    )
    wild = filters.check(
        sample_filter(name, code, text, ref), "filter", {ref: common_pb2.Value(string_value=bound)}
    )
    assert plain.root is not None and wild.root is not None, wild.violations
    for build in (
        lambda root: compiler.count_query(root, clock),
        lambda root: compiler.ids_query(root, clock, "after", 10),
        lambda root: compiler.match_query(root, clock, "someone"),
    ):
        a, b = build(plain.root), build(wild.root)
        assert a.sql == b.sql
        used = {int(n) for n in re.findall(r"\$(\d+)::", a.sql)}
        assert used == set(range(1, len(a.params) + 1)) and len(b.params) == len(a.params)
    hostile = compiler.count_query(wild.root, clock)
    assert text in hostile.params or any(text in str(p) for p in hostile.params)


def test_an_id_list_is_its_ids_between_separators_and_refuses_an_id_holding_one() -> None:
    """Id lists travel as one text parameter that the statement splits (``compiler.id_array``)."""
    assert compiler.id_list([]) == ""
    assert compiler.id_list(["c1", "a.b@c+d"]) == "c1\x1fa.b@c+d"
    with pytest.raises(ValueError):
        compiler.id_list(["c1", "x\x1fy"])
    params = compiler.Params()
    assert params.add_ids(["c1", "c2"]) == "string_to_array($1::text, E'\\x1f')"
    assert params.values == ["c1\x1fc2"]
