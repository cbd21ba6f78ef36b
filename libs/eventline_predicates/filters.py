"""Checking a proto ``Filter`` and turning it into a validated tree.

The tree keeps operands typed and already resolved from the request's
bindings; periods stay symbolic until ``periods.Clock.resolve`` pins them to a
``now`` and a time zone. Every problem is reported with its field path. A
campaign trigger's context predicates are the same ``Predicate`` messages,
checked here by the same rules (``check_trigger_predicates``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_shared import values
from eventline_shared.errors import FieldViolation

MAX_DEPTH = 10
MAX_NODES = 200
MAX_CHILDREN = 100
MAX_PREDICATES = 20
MAX_IN_VALUES = 1000
MAX_OPERANDS = 5000
"""Operands (literals and references) in a whole filter: bounds the work of checking one."""
MAX_DAYS = 36_500
MAX_HOURS = MAX_DAYS * 24

EQUALITY_OPERATORS = {pb.OPERATOR_EQUALS, pb.OPERATOR_NOT_EQUALS}
SET_OPERATORS = {pb.OPERATOR_IN, pb.OPERATOR_NOT_IN}
STRING_OPERATORS = {pb.OPERATOR_CONTAINS, pb.OPERATOR_STARTS_WITH}
ORDER_OPERATORS = {
    pb.OPERATOR_GREATER,
    pb.OPERATOR_GREATER_OR_EQUAL,
    pb.OPERATOR_LESS,
    pb.OPERATOR_LESS_OR_EQUAL,
}
PRESENCE_OPERATORS = {pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS}
KNOWN_OPERATORS = EQUALITY_OPERATORS | SET_OPERATORS | STRING_OPERATORS | ORDER_OPERATORS | PRESENCE_OPERATORS
KNOWN_CHANNELS = {pb.CHANNEL_EMAIL, pb.CHANNEL_SMS, pb.CHANNEL_PUSH}
KNOWN_COMPARISONS = {
    pb.COMPARISON_EQUAL,
    pb.COMPARISON_NOT_EQUAL,
    pb.COMPARISON_LESS,
    pb.COMPARISON_LESS_OR_EQUAL,
    pb.COMPARISON_GREATER,
    pb.COMPARISON_GREATER_OR_EQUAL,
}


@dataclass(frozen=True)
class Operand:
    """A typed value: ``kind`` is string, number, boolean or timestamp."""

    kind: str
    stored: str
    """The JSON storage text (see eventline_shared.values)."""
    python: Any
    """str, Decimal, bool or aware datetime."""


@dataclass(frozen=True)
class Predicate:
    field: str
    operator: int
    operands: tuple[Operand, ...]


@dataclass(frozen=True)
class PeriodSpec:
    """A period as written: ``kind`` is absolute, hours, days or days_ago."""

    kind: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    amount: int = 0
    min_days_ago: int = 0
    max_days_ago: int = 0


@dataclass
class Node:
    path: str


@dataclass
class BoolNode(Node):
    op: str  # "all", "any", "not"
    children: list[Node]

    def combine(self, results: Iterable[bool]) -> bool:
        """This node's answer from its children's, in their order (the one way every evaluator
        of a tree combines them)."""
        if self.op == "not":
            return not next(iter(results))
        return all(results) if self.op == "all" else any(results)


@dataclass
class EventNode(Node):
    name: str
    predicates: tuple[Predicate, ...]
    test: str  # "count", "last", "first", "days"
    period: PeriodSpec | None = None
    """The count period, or the period of last/first."""
    low: int = 1
    high: int | None = None
    comparison: int = 0
    days: int = 0


@dataclass
class CustomerNode(Node):
    test: str  # "address", "consent", "attribute"
    channel: int = 0
    predicate: Predicate | None = None


@dataclass
class Checked:
    """The outcome of checking a filter."""

    root: Node | None
    violations: list[FieldViolation] = field(default_factory=list)
    references: set[str] = field(default_factory=set)
    unresolved: set[str] = field(default_factory=set)


def operand_of(value: common_pb2.Value, path: str) -> tuple[Operand | None, FieldViolation | None]:
    # The storage form of one value, through the same encoder as ingestion's.
    encoded = values.encode_values({"v": value}, path)
    if encoded.violations:
        return None, FieldViolation(path, encoded.violations[0].description)
    prefix = '{"v": '
    assert encoded.json.startswith(prefix) and encoded.json.endswith("}")
    stored = encoded.json[len(prefix) : -1]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return Operand("string", stored, value.string_value), None
    if kind in ("integer_value", "decimal_value"):
        return Operand("number", stored, Decimal(stored)), None
    if kind == "boolean_value":
        return Operand("boolean", stored, value.boolean_value), None
    return Operand("timestamp", stored, values.timestamp_to_datetime(value.timestamp_value)), None


class _LimitCrossed(Exception):
    """A size limit of the whole filter was crossed: checking stops there."""


class _Checker:
    def __init__(
        self,
        bindings: Mapping[str, common_pb2.Value] | None,
        *,
        max_operands: int = MAX_OPERANDS,
        literals_only: bool = False,
    ) -> None:
        self.bindings = bindings
        self.max_operands = max_operands
        self.literals_only = literals_only
        self.result = Checked(None)
        self.nodes = 0
        self.operands = 0
        self._bound: dict[str, tuple[Operand | None, FieldViolation | None]] = {}

    def bad(self, path: str, description: str) -> None:
        self.result.violations.append(FieldViolation(path, description))

    def filter(self, f: pb.Filter, path: str, depth: int) -> Node | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            # Stop here: walking the rest of a huge tree is the work the limit is there to bound.
            self.bad(path, f"a filter has at most {MAX_NODES} nodes")
            raise _LimitCrossed
        if depth > MAX_DEPTH:
            self.bad(path, f"a filter is at most {MAX_DEPTH} levels deep")
            return None
        kind = f.WhichOneof("node")
        if kind in ("all_of", "any_of"):
            group = getattr(f, kind)
            gpath = f"{path}.{kind}"
            if not group.filters:
                self.bad(f"{gpath}.filters", f"{kind} needs at least one filter")
            if len(group.filters) > MAX_CHILDREN:
                self.bad(f"{gpath}.filters", f"{kind} has at most {MAX_CHILDREN} filters")
                return None
            children = [
                self.filter(c, f"{gpath}.filters[{i}]", depth + 1) for i, c in enumerate(group.filters)
            ]
            if any(c is None for c in children) or not children:
                return None
            return BoolNode(path, "all" if kind == "all_of" else "any", [c for c in children if c])
        if kind == "negation":
            child = self.filter(f.negation, f"{path}.negation", depth + 1)
            return BoolNode(path, "not", [child]) if child else None
        if kind in ("event", "customer"):
            leaf = (
                self.event(f.event, f"{path}.event")
                if kind == "event"
                else self.customer(f.customer, f"{path}.customer")
            )
            if leaf is not None:
                leaf.path = path  # a node is named by the path of its Filter
            return leaf
        self.bad(path, "a filter needs one of all_of, any_of, negation, event or customer")
        return None

    def event(self, e: pb.EventCondition, path: str) -> Node | None:
        start = len(self.result.violations)
        bad = values.check_code(e.name, f"{path}.name", "event name")
        if bad:
            self.result.violations.append(bad)
        predicates = self.predicates(e.predicates, f"{path}.predicates")
        if predicates is None:
            return None
        test = e.WhichOneof("test")
        node = EventNode(path, e.name, tuple(p for p in predicates if p), "count")
        if test is None:
            pass
        elif test == "count":
            c = e.count
            cpath = f"{path}.count"
            if c.HasField("period"):
                node.period = self.period(c.period, f"{cpath}.period")
            bound = c.WhichOneof("bound")
            if bound in ("at_least", "at_most", "exactly"):
                number = getattr(c, bound)
                if number < 0:
                    self.bad(f"{cpath}.{bound}", "a count bound must be 0 or more")
                node.low, node.high = {
                    "at_least": (number, None),
                    "at_most": (0, number),
                    "exactly": (number, number),
                }[bound]
            elif bound == "between":
                low, high = c.between.min, c.between.max
                if low < 0:
                    self.bad(f"{cpath}.between.min", "a count bound must be 0 or more")
                if high < low:
                    self.bad(f"{cpath}.between.max", "max must be at least min")
                node.low, node.high = low, high
        elif test in ("last_occurred", "first_occurred"):
            node.test = "last" if test == "last_occurred" else "first"
            node.period = self.period(getattr(e, test), f"{path}.{test}")
        else:
            node.test = "days"
            d = e.days_since_last
            if d.comparison not in KNOWN_COMPARISONS:
                self.bad(
                    f"{path}.days_since_last.comparison", "comparison must be one of the Comparison values"
                )
            if not 0 <= d.days <= MAX_DAYS:
                self.bad(f"{path}.days_since_last.days", f"days must be between 0 and {MAX_DAYS}")
            node.comparison, node.days = d.comparison, d.days
        if len(self.result.violations) > start or len(predicates) != len(node.predicates):
            return None
        return node

    def predicates(self, found: Sequence[pb.Predicate], path: str) -> list[Predicate | None] | None:
        """Each predicate of a list checked (None where it is bad); None when the list is too long."""
        if len(found) > MAX_PREDICATES:
            self.bad(path, f"at most {MAX_PREDICATES} predicates are allowed")
            return None
        return [self.predicate(p, f"{path}[{i}]") for i, p in enumerate(found)]

    def period(self, p: pb.Period, path: str) -> PeriodSpec | None:
        kind = p.WhichOneof("kind")
        if kind == "absolute":
            start = end = None
            for side in ("start", "end"):
                if p.absolute.HasField(side):
                    ts = getattr(p.absolute, side)
                    bad = values.check_timestamp(ts, f"{path}.absolute.{side}")
                    if bad:
                        self.result.violations.append(bad)
                        return None
                    if side == "start":
                        start = values.timestamp_to_datetime(ts)
                    else:
                        end = values.timestamp_to_datetime(ts)
            if start is None and end is None:
                self.bad(f"{path}.absolute", "an absolute period needs a start, an end or both")
                return None
            return PeriodSpec("absolute", start=start, end=end)
        if kind == "last":
            unit = p.last.unit
            if unit not in (pb.TIME_UNIT_HOUR, pb.TIME_UNIT_DAY):
                self.bad(f"{path}.last.unit", "unit must be TIME_UNIT_HOUR or TIME_UNIT_DAY")
                return None
            limit = MAX_HOURS if unit == pb.TIME_UNIT_HOUR else MAX_DAYS
            if not 1 <= p.last.amount <= limit:
                self.bad(f"{path}.last.amount", f"amount must be between 1 and {limit}")
                return None
            return PeriodSpec("hours" if unit == pb.TIME_UNIT_HOUR else "days", amount=p.last.amount)
        if kind == "days_ago":
            low, high = p.days_ago.min_days_ago, p.days_ago.max_days_ago
            if low < 0:
                self.bad(f"{path}.days_ago.min_days_ago", "min_days_ago must be 0 or more")
                return None
            if not low <= high <= MAX_DAYS:
                self.bad(
                    f"{path}.days_ago.max_days_ago",
                    f"max_days_ago must be between min_days_ago and {MAX_DAYS}",
                )
                return None
            return PeriodSpec("days_ago", min_days_ago=low, max_days_ago=high)
        self.bad(path, "a period needs one of absolute, last or days_ago")
        return None

    def customer(self, c: pb.CustomerCondition, path: str) -> Node | None:
        test = c.WhichOneof("test")
        if test in ("has_address", "consent_granted"):
            channel = getattr(c, test)
            if channel not in KNOWN_CHANNELS:
                self.bad(f"{path}.{test}", "channel must be CHANNEL_EMAIL, CHANNEL_SMS or CHANNEL_PUSH")
                return None
            return CustomerNode(path, "address" if test == "has_address" else "consent", channel=channel)
        if test == "attribute":
            predicate = self.predicate(c.attribute, f"{path}.attribute", what="attribute code")
            return CustomerNode(path, "attribute", predicate=predicate) if predicate else None
        self.bad(path, "a customer condition needs one of has_address, consent_granted or attribute")
        return None

    def predicate(self, p: pb.Predicate, path: str, what: str = "field code") -> Predicate | None:
        start = len(self.result.violations)
        bad = values.check_code(p.field, f"{path}.field", what)
        if bad:
            self.result.violations.append(bad)
        op = p.operator
        operands: list[Operand] = []
        if op not in KNOWN_OPERATORS:
            self.bad(f"{path}.operator", "operator must be one of the Operator values")
            return None
        if op in PRESENCE_OPERATORS:
            if p.HasField("value") or p.values:
                self.bad(f"{path}.value", "EXISTS and NOT_EXISTS take no operand")
        elif op in SET_OPERATORS:
            if p.HasField("value"):
                self.bad(f"{path}.value", "IN and NOT_IN take their operands in `values`")
            if not p.values:
                self.bad(f"{path}.values", "IN and NOT_IN need at least one operand")
            elif len(p.values) > MAX_IN_VALUES:
                self.bad(f"{path}.values", f"at most {MAX_IN_VALUES} operands are allowed")
            else:
                for i, o in enumerate(p.values):
                    operand = self.operand(o, f"{path}.values[{i}]", op)
                    if operand:
                        operands.append(operand)
        else:
            if p.values:
                self.bad(f"{path}.values", "only IN and NOT_IN take `values`")
            if not p.HasField("value"):
                self.bad(f"{path}.value", "this operator needs an operand in `value`")
            else:
                operand = self.operand(p.value, f"{path}.value", op)
                if operand:
                    operands.append(operand)
        if len(self.result.violations) > start:
            return None
        if self.bindings is None and len(operands) != (
            len(p.values) if op in SET_OPERATORS else 0 if op in PRESENCE_OPERATORS else 1
        ):
            # Validation only: unresolved references leave operands out.
            return None
        return Predicate(p.field, op, tuple(operands))

    def operand(self, o: pb.Operand, path: str, op: int) -> Operand | None:
        self.operands += 1
        if self.operands > self.max_operands:
            self.bad(path, f"a filter has at most {self.max_operands} operands in all")
            raise _LimitCrossed
        kind = o.WhichOneof("kind")
        if self.literals_only and kind != "literal":
            self.bad(path, "trigger predicates take literal values, not references")
            return None
        if kind == "literal":
            operand, bad = operand_of(o.literal, f"{path}.literal")
            if bad:
                self.result.violations.append(bad)
                return None
            assert operand is not None
            return self.typed(operand, f"{path}.literal", op, "")
        if kind == "reference":
            ref = o.reference
            rpath = f"{path}.reference"
            if not ref.startswith("$"):
                self.bad(rpath, 'a reference is "$" followed by a field code, for example "$item_id"')
                return None
            code = ref[1:]
            bad = values.check_code(code, rpath, "referenced field code")
            if bad:
                self.result.violations.append(bad)
                return None
            self.result.references.add(code)
            if self.bindings is None or code not in self.bindings:
                self.result.unresolved.add(code)
                if self.bindings is not None:
                    self.bad(rpath, f"reference ${code} is not bound: bindings has no {code!r}")
                return None
            if code not in self._bound:
                self._bound[code] = operand_of(self.bindings[code], values.quote_path("bindings", code))
            operand, bad = self._bound[code]
            if bad:
                self.bad(rpath, f"reference ${code} is bound to a bad value: {bad.description}")
                return None
            assert operand is not None
            return self.typed(operand, rpath, op, f" (bound to ${code})")
        self.bad(path, "an operand needs a literal or a reference")
        return None

    def typed(self, operand: Operand, path: str, op: int, origin: str) -> Operand | None:
        if op in STRING_OPERATORS and operand.kind != "string":
            name = pb.Operator.Name(op)
            self.bad(path, f"{name} needs a string operand, got a {operand.kind}{origin}")
            return None
        if op in ORDER_OPERATORS and operand.kind not in ("number", "timestamp"):
            name = pb.Operator.Name(op)
            self.bad(path, f"{name} needs a number or timestamp operand, got a {operand.kind}{origin}")
            return None
        return operand


def check(
    f: pb.Filter, path: str, bindings: Mapping[str, common_pb2.Value] | None, *, present: bool = True
) -> Checked:
    """Check ``f`` (found at ``path`` in the request).

    With ``bindings`` None, references are only listed (ValidateFilter, saved
    segments); otherwise an unresolved reference is a violation.
    """
    checker = _Checker(bindings)
    if present:
        try:
            checker.result.root = checker.filter(f, path, 1)
        except _LimitCrossed:
            pass  # the violation is recorded; what was found before it is kept
    else:
        checker.bad(path, "a filter is required")
    if checker.result.violations:
        checker.result.root = None
    return checker.result


@dataclass(frozen=True)
class CheckedPredicates:
    """The outcome of checking a list of predicates: all of them, or the violations."""

    predicates: tuple[Predicate, ...]
    violations: list[FieldViolation]


def check_trigger_predicates(found: Sequence[pb.Predicate], path: str) -> CheckedPredicates:
    """Check a campaign trigger's context predicates, listed at ``path``.

    The rules of an event condition's predicates, with literal operands only (the
    trigger event is what they are tested on: there is nothing to bind a reference to).
    """
    # A trigger is one condition, not a filter: its own limits (MAX_PREDICATES predicates of at
    # most MAX_IN_VALUES operands) bound the work, and no filter-wide operand limit applies.
    checker = _Checker({}, max_operands=MAX_PREDICATES * MAX_IN_VALUES, literals_only=True)
    checked = checker.predicates(found, path)
    violations = checker.result.violations
    if checked is None or violations:
        return CheckedPredicates((), violations)
    return CheckedPredicates(tuple(p for p in checked if p), violations)


def check_event_predicates(
    found: Sequence[pb.Predicate], path: str, bindings: Mapping[str, common_pb2.Value] | None
) -> CheckedPredicates:
    """Check an event match's context predicates, whose operands may reference ``bindings``
    (a journey's trigger context: ``cart_id EQUALS $cart_id``).

    With ``bindings`` None (when a campaign is saved) references are accepted and left
    out; otherwise an unbound reference is a violation (the predicates never hold).
    """
    checker = _Checker(bindings, max_operands=MAX_PREDICATES * MAX_IN_VALUES)
    checked = checker.predicates(found, path)
    violations = checker.result.violations
    if checked is None or violations:
        return CheckedPredicates((), violations)
    return CheckedPredicates(tuple(p for p in checked if p), violations)


def walk(node: Node) -> list[Node]:
    """The nodes of a tree in depth-first pre-order."""
    out: list[Node] = [node]
    if isinstance(node, BoolNode):
        for child in node.children:
            out.extend(walk(child))
    return out
