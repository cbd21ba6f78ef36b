"""CPU per call of the hot functions that mypyc compiles (docs/performance.md, "Compiled hot
modules"), on the benchmarks' own inputs, without services or a database.

Segmentation, as its consumer evaluates a batch of bench/realtime.py: the 50 real-time segments
(``variants``) for 2,000 customers with 30 events each of ``paced_events``' form (the 20 names, up
to 40 days old, its contexts), each customer probed for the segments that one of its events' names
moves (``Affected``), at one instant; each probe's row holds what ``compiler.match_many_query``
would return for it (worked out here from the events, by the reference predicates):

* ``held_us``: ``evaluation.Decision.held`` per probe (the tree's answer from the row);
* ``forecast_us``: ``transitions.next_change`` per probe (when time alone changes it next);
* ``observation_us``: ``realtime._Reading.observation`` per probe (both, and the row's values read).

Ingestion, on bench/ingest.py's requests (500 events each, ``make_events``):

* ``batch_item_us``: ``validation.batch_item`` per item (validation and context encoding);
* ``stored_event_us``: ``stored_form.stored_event_bytes`` per event (the stored event's bytes);
* ``columns_us``: ``stored_form.statement_columns`` per event, a request's events at a time (the
  stored event's bytes, its stream entry and its elements of the storing statement's columns: the
  per-event part of ``IngestionRepository.store_events``).

Each figure is the least, over ``--repeats`` runs, of the process CPU time of the whole input set,
per call. ``compiled`` says which of the modules were imported compiled (an extension module):
compare two builds by running this once on each, alternating (an interpreted checkout's
``libs`` and ``services/*`` first on ``PYTHONPATH``). The last line printed is one JSON object.

Usage: python bench/hot_functions.py [--repeats N] [--parts segmentation,ingestion]
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import command_line
from eventline.common.v1 import common_pb2
from ingest import batch_requests, make_events
from realtime import paced_events, variants

from eventline_ingestion import stored_form, validation
from eventline_predicates import evaluation as predicates_evaluation
from eventline_predicates import filters, periods
from eventline_predicates.filters import CustomerNode, EventNode
from eventline_segmentation import compiler, evaluation, realtime, transitions
from eventline_segmentation.membership import Definition
from eventline_shared import values
from eventline_shared.clock import ManualClock

NOW = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.UTC)
CUSTOMERS = 2_000
EVENTS_PER_CUSTOMER = 30
MODULES = (
    transitions,
    evaluation,
    realtime,
    predicates_evaluation,
    periods,
    filters,
    validation,
    values,
    stored_form,
)


def cpu_per_call(work: Callable[[], int], repeats: int) -> float:
    """The least CPU time of ``work`` (which returns how many calls it made) in µs per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        calls = work()
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


class _Event:
    def __init__(self, name: str, at: dt.datetime, context: dict[str, common_pb2.Value]) -> None:
        self.name, self.at, self.context = name, at, context


def histories() -> dict[str, list[_Event]]:
    found: dict[str, list[_Event]] = {}
    for customer, _, name, at, item_id, amount in paced_events(
        "hot", CUSTOMERS, CUSTOMERS * EVENTS_PER_CUSTOMER, NOW
    ):
        context = {
            "item_id": common_pb2.Value(integer_value=item_id),
            "amount": common_pb2.Value(decimal_value=amount + ".0"),
        }
        found.setdefault(customer, []).append(_Event(name, at, context))
    return found


def _matching(node: EventNode, events: Sequence[_Event]) -> list[dt.datetime]:
    return sorted(
        e.at
        for e in events
        if e.name == node.name
        and all(predicates_evaluation.predicate_holds(p, e.context) for p in node.predicates)
    )


def _micros_text(instants: Sequence[dt.datetime]) -> str:
    return ",".join(str(transitions.to_micros(t)) for t in instants)


def row_of(
    query: compiler.MatchQuery,
    plan: transitions.LoadPlan,
    clock: periods.Clock,
    customer: str,
    events: Sequence[_Event],
    tier: str,
    position: int,
) -> tuple[Any, ...]:
    """What ``match_many_query`` (with ``realtime``'s window columns) returns for one customer."""
    windows = {
        f"{prefix}{j}": load
        for j, load in enumerate(plan.loads)
        if isinstance(load, transitions.WindowOccurrences)
        for prefix in ("w", "a")
    }
    row: list[Any] = []
    for name in query.names:
        if name in ("position", "customer_id"):
            row.append(position if name == "position" else customer)
            continue
        if name in windows:
            load = windows[name]
            matching = _matching(load.node, events)
            if name[0] == "w":
                inside = [t for t in matching if load.window.holds(t)]
                row.append(_micros_text(inside[::-1][: load.limit]))
            else:
                row.append(_micros_text([t for t in matching if load.after(t)][: load.limit]))
            continue
        node = query.nodes[int(name[1:])]
        if isinstance(node, CustomerNode):  # every customer has an e-mail address (bench/triggers.py's)
            fields = {"tier": common_pb2.Value(string_value=tier)}
            held = node.predicate is None or predicates_evaluation.predicate_holds(node.predicate, fields)
            row.append(held)
            continue
        assert isinstance(node, EventNode)
        matching = _matching(node, events)
        if name[0] == "n":
            if node.period is not None:
                matching = [t for t in matching if clock.resolve(node.period).holds(t)]
            row.append(len(matching))
        elif name[0] == "l":
            row.append(matching[-1] if matching else None)
        else:
            row.append(matching[0] if matching else None)
    return tuple(row)


def segmentation_inputs() -> list[tuple[realtime._Reading, realtime.Probe, tuple[Any, ...], int]]:
    """Each probe of one consumer batch, with its segment's reading and its row."""
    segments = [
        realtime.compile_definition(Definition(segment_id, segment_id, f.SerializeToString(), "UTC", None, 1))
        for segment_id, f in variants()
    ]
    affected = realtime.Affected(segments)
    rng = random.Random(13)
    found = histories()
    tiers = {customer: rng.choice(["bronze", "silver", "gold"]) for customer in found}
    probed: dict[str, list[str]] = {}
    for customer, events in found.items():
        for segment in affected.by([rng.choice(events).name]):
            probed.setdefault(segment.definition.segment_id, []).append(customer)
    inputs = []
    for segment in segments:
        customers = probed.get(segment.definition.segment_id, [])
        if not customers:
            continue
        params = compiler.Params()
        rows = compiler.RowBounds(params, customers, shared=True)
        clock = periods.Clock(NOW, segment.zone)
        clocks = [clock] * len(customers)
        plan = transitions.plan(segment.root, NOW, segment.zone, clock)
        node_index = {id(node): i for i, node in enumerate(filters.walk(segment.root))}
        extra: list[str] = []
        listed: dict[int, str] = {}
        for j, load in enumerate(plan.loads):
            if isinstance(load, transitions.WindowOccurrences):
                extra += realtime._window_columns(
                    load, j, rows.bounds([load.window] * len(customers)), params, []
                )
                listed[node_index[id(load.node)]] = f"w{j}"
        query = compiler.match_many_query(
            segment.root, clocks, params, rows, [*extra, "q.position AS position"], listed
        )
        reading = realtime._Reading(
            query, list(range(len(customers))), clocks, [plan] * len(customers), listed
        )
        for position, customer in enumerate(customers):
            row = row_of(query, plan, clock, customer, found[customer], tiers[customer], position + 1)
            inputs.append((reading, realtime.Probe(segment, customer, NOW), row, position))
    return inputs


def measure_segmentation(repeats: int) -> dict[str, float]:
    inputs = segmentation_inputs()
    held = [(reading.decision, row, reading.clocks[position]) for reading, _, row, position in inputs]
    forecasts = []
    for reading, probe, row, position in inputs:
        # The values as ``_Reading.observation`` reads them from the row.
        assert reading.plans is not None
        answers = reading.decision.held(row, reading.clocks[position])
        loaded: list[transitions.Value] = []
        for kind, i, column, after in reading.loads:
            if kind == transitions.ANSWER:
                loaded.append(answers[i])
            elif kind == transitions.WINDOW:
                loaded.append((realtime._micros_list(row[column]), realtime._micros_list(row[after])))
            else:
                loaded.append(None if row[column] is None else transitions.to_micros(row[column]))
        forecasts.append((reading.plans[position], loaded))
        member, _ = transitions.next_change(reading.plans[position], loaded)
        assert reading.observation(probe, row, position).member == member == answers[0], probe

    def held_all() -> int:
        for decision, row, clock in held:
            decision.held(row, clock)
        return len(held)

    def forecast_all() -> int:
        next_change = transitions.next_change
        for plan, loaded in forecasts:
            next_change(plan, loaded)
        return len(forecasts)

    def observe_all() -> int:
        for reading, probe, row, position in inputs:
            reading.observation(probe, row, position)
        return len(inputs)

    return {
        "probes": len(inputs),
        "held_us": cpu_per_call(held_all, repeats),
        "forecast_us": cpu_per_call(forecast_all, repeats),
        "observation_us": cpu_per_call(observe_all, repeats),
    }


def measure_ingestion(repeats: int) -> dict[str, float]:
    requests = batch_requests(make_events(10_000, 16), full_replies=False)
    arrival = validation.Arrival.now_under("00-" + "1" * 32 + "-" + "2" * 16 + "-01", ManualClock(NOW))
    checked = [validation.batch_item(item, i, arrival) for r in requests for i, item in enumerate(r.events)]
    events = [e for e in checked if isinstance(e, validation.NewEvent)]
    assert len(events) == len(checked)
    received = stored_form.received_at_field(values.datetime_to_timestamp(NOW))
    encoded = [(e, e.event_id.encode(), e.customer_id.encode(), e.name.encode(), received) for e in events]
    per_request = [
        events[i : i + len(requests[0].events)] for i in range(0, len(events), len(requests[0].events))
    ]

    def validate_all() -> int:
        batch_item = validation.batch_item
        for request in requests:
            for i, item in enumerate(request.events):
                batch_item(item, i, arrival)
        return len(events)

    def encode_all() -> int:
        stored_event_bytes = stored_form.stored_event_bytes
        for args in encoded:
            stored_event_bytes(*args)
        return len(encoded)

    def columns_all() -> int:
        statement_columns = stored_form.statement_columns
        for request_events in per_request:
            statement_columns(request_events, received, None)
        return len(events)

    return {
        "events": len(events),
        "batch_item_us": cpu_per_call(validate_all, repeats),
        "stored_event_us": cpu_per_call(encode_all, repeats),
        "columns_us": cpu_per_call(columns_all, repeats),
    }


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument(
        "--repeats", type=int, default=20, help="timings of each input set (the least counts)"
    )
    parser.add_argument(
        "--parts",
        default="segmentation,ingestion",
        help="which functions to time, comma-separated: segmentation, ingestion",
    )
    arguments = parser.parse_args()
    repeats, parts = arguments.repeats, arguments.parts.split(",")
    compiled = sorted(m.__name__ for m in MODULES if (m.__file__ or "").endswith(".so"))
    figures: dict[str, Any] = {"compiled": compiled}
    if "segmentation" in parts:
        figures.update(measure_segmentation(repeats))
    if "ingestion" in parts:
        figures.update(measure_ingestion(repeats))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
