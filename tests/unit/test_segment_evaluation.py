"""Real-time segments' evaluation (``evaluation.Decision``) against MatchCustomer's (``evaluation.explain``)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventline_predicates import filters, periods
from eventline_segmentation import compiler, evaluation, transitions
from tests.integration.test_segmentation_differential import bindings_strategy
from tests.unit.test_segment_transitions import EXAMPLES, SCENARIOS, any_filters, local_day_start

MICROSECOND = dt.timedelta(microseconds=1)


@st.composite
def instants(draw: st.DrawFn, zone: str, now: dt.datetime) -> dt.datetime | None:
    """No event, an instant anywhere in the filters' reach, or one at a bound of their periods."""
    return draw(
        st.one_of(
            st.none(),
            st.integers(-45 * 24 * 60, 24 * 60).map(lambda m: now + dt.timedelta(minutes=m)),
            st.tuples(
                st.one_of(
                    st.integers(-1, 42).map(lambda days: local_day_start(zone, now, days)),
                    st.integers(0, 72).map(lambda hours: now - dt.timedelta(hours=hours)),
                    st.just(now),
                ),
                st.sampled_from([0, -1, 1]),
            ).map(lambda edge: edge[0] + edge[1] * MICROSECOND),
        )
    )


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(
    flt=any_filters,
    bindings=bindings_strategy,
    scenario=st.sampled_from(SCENARIOS),
    data=st.data(),
)
def test_decision_holds_where_explain_does(
    flt: pb.Filter,
    bindings: dict[str, common_pb2.Value],
    scenario: tuple[str, dt.datetime],
    data: st.DataObject,
) -> None:
    """For any tree and any values of MatchCustomer's columns, the decisive columns alone (the
    rows of ``match_many_query``) give every node the answer ``explain`` gives it."""
    checked = filters.check(flt, "filter", bindings)
    assert checked.root is not None, checked.violations
    zone, now = scenario
    clock = periods.Clock(now, periods.time_zone(zone))
    whole = compiler.match_query(checked.root, clock, "c")
    row: dict[str, Any] = {"customer_id": "c"}
    for name in whole.names[1:]:
        kind = name[0]
        if kind == "n":
            row[name] = data.draw(st.integers(0, 5), label=name)
        elif kind in "lf":
            row[name] = data.draw(instants(zone, now), label=name)
        elif kind == "h":
            row[name] = data.draw(st.booleans(), label=name)
        else:
            row[name] = None  # a profile value: only explained, never decisive
    matched, explanations = evaluation.explain(whole, row, clock)

    params = compiler.Params()
    lean = compiler.match_many_query(
        checked.root, [clock], params, compiler.RowBounds(params, ["c"], shared=True)
    )
    assert set(lean.names) <= set(whole.names)
    held = evaluation.Decision(lean).held(tuple(row[name] for name in lean.names), clock)
    assert held[0] == matched
    assert held == [e.held for e in explanations]

    # Counts in a sliding period decided by their window's events instead (real-time segments):
    # a list of as many as the window load's limit at most.
    plan = transitions.plan(checked.root, now, clock.zone)
    node_index = {id(node): i for i, node in enumerate(whole.nodes)}
    listed: dict[int, str] = {}
    for j, load in enumerate(plan.loads):
        if isinstance(load, transitions.WindowOccurrences):
            i = node_index[id(load.node)]
            listed[i] = f"w{j}"
            row[f"w{j}"] = ",".join(str(k) for k in range(min(row[f"n{i}"], load.limit)))
    params = compiler.Params()
    windowed = compiler.match_many_query(
        checked.root,
        [clock],
        params,
        compiler.RowBounds(params, ["c"], shared=True),
        [f"NULL AS {column}" for column in listed.values()],
        listed,
    )
    assert not {f"n{i}" for i in listed} & set(windowed.names)
    # Every parameter is used (PostgreSQL cannot type one that is not).
    assert {int(n) for n in re.findall(r"\$(\d+)::", windowed.sql)} == set(range(1, len(params.values) + 1))
    decision = evaluation.Decision(windowed, listed)
    assert decision.held(tuple(row[name] for name in windowed.names), clock) == held
