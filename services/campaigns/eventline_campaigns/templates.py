"""Message templates: Jinja2 in a sandbox, checked at save time, rendered within a budget.

Variables:

* ``client``: the customer: ``customer_id``, ``email``, ``phone``,
  ``attributes.<code>`` (also reachable as ``client.<code>`` when the code is
  not one of the names above) and ``eventContext.<field_code>``, the trigger
  event's context - the syntax customers already use.
* ``event``: ``name``, ``event_id``, ``occurred_at`` of the trigger event.

Safety (see README, "Message templates", for the numbers):

* ``ImmutableSandboxedEnvironment``: no ``__class__``/``__mro__`` walks, no
  ``str.format`` tricks, no mutation of lists or dicts. Methods of values are
  an allow-list (``upper``, ``replace``, ``strftime``...): ``to_bytes``,
  ``translate``, ``expandtabs`` and the like are refused.
* Work is counted in steps: every loop iteration, call, filter (plus the size
  of what it walks), attribute read and output chunk. A render stops past
  ``MAX_STEPS`` steps or ``RENDER_BUDGET_S`` of CPU time.
* Memory is bounded before it is taken: no value a template builds may exceed
  ``MAX_VALUE`` characters or items (contents included), and one render may
  build at most ``MAX_BUILT`` in all. Operations whose result can be far
  larger than their inputs - ``*`` on strings and lists, ``%``-formatting and
  the ``format`` filter, ``str.format`` widths and precisions, ``center``,
  ``ljust``, ``rjust``, ``zfill``, ``indent``, ``wordwrap``, ``join``,
  ``replace``, ``batch``, ``slice``, ``tojson``, ``strftime``... - are sized
  from their arguments and refused before anything is allocated.
* At save time the template is compiled (syntax errors name the line) and
  refused when it names an attribute starting with ``_``, uses the ``attr``
  filter, calls a method outside the allow-list, when a constant part of it
  would be refused at render (``{{ ''|center(10**9) }}``), or when its loops
  over constant ranges run more than ``MAX_STEPS`` times.
* Undefined variables raise (``StrictUndefined``): a delivery fails with the
  reason recorded rather than sending a half-rendered message.
* Values are data, never templates: a ``{{ }}`` inside a context value is
  rendered as text. HTML bodies are autoescaped.

The service never renders on its event loop: ``eventline_campaigns.rendering``
runs ``render`` in worker processes with a memory limit.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import re
import string
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.runtime import BlockReference, Context, LoopContext, Macro, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    safe_range,
)
from jinja2.utils import Cycler, Joiner, Namespace, _PassArg
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

MAX_STEPS = 100_000
"""Steps one render may take: loop iterations, calls, filters (plus what they walk), attribute reads."""
RENDER_BUDGET_S = 0.05
"""CPU time one template may take to render (its own CPU, so a busy machine does not fail it)."""
MAX_OUTPUT_CHARS = 1_000_000
"""The largest rendered template (an e-mail body)."""
MAX_VALUE = 1_000_000
"""The largest value a template may build: characters of a string, items of a list (contents included)."""
MAX_BUILT = 10_000_000
"""Characters and items one render may build in all."""
MAX_STRFTIME_FORMAT = 1000
"""The longest ``strftime`` format (its output can be 256 times longer)."""

_LOOP = "eventline loop"  # filter names with a space cannot be written in a template
_BUILT = "eventline built"


@dataclass(frozen=True)
class Limits:
    """The work budget of one render; the service's settings may raise it."""

    steps: int = MAX_STEPS
    cpu_s: float = RENDER_BUDGET_S


DEFAULT_LIMITS = Limits()


class RenderError(Exception):
    """A template could not be rendered; the message says why, for the delivery's reason."""


class _Budget:
    """What one render (or one save-time check) has spent so far."""

    __slots__ = ("built", "check_after", "cpu_start", "limits", "steps")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.steps = 0
        self.built = 0
        self.cpu_start = time.thread_time()
        # The wall clock runs at least as fast as this thread's CPU clock: the CPU clock
        # (a system call) is only read once the wall clock says the budget may be spent.
        self.check_after = time.monotonic() + limits.cpu_s

    def tick(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.steps:
            raise SecurityError(f"the template takes more than {self.limits.steps} steps")
        now = time.monotonic()
        if now > self.check_after:
            used = time.thread_time() - self.cpu_start
            if used > self.limits.cpu_s:
                raise SecurityError(f"rendering took more than {round(self.limits.cpu_s * 1000)} ms of CPU")
            self.check_after = now + self.limits.cpu_s - used

    def allow(self, predicted: int) -> None:
        """Refuse, before it exists, a value of ``predicted`` size."""
        if predicted > MAX_VALUE:
            raise SecurityError(f"a value of more than {MAX_VALUE} characters or items")
        if self.built + predicted > MAX_BUILT:
            raise SecurityError(f"the template builds more than {MAX_BUILT} characters or items")

    def take(self, value: Any) -> Any:
        """Count a value the template built (and refuse it when too large)."""
        if isinstance(value, range):
            return value  # lazy: its numbers exist one at a time
        size = self.size(value)
        self.allow(size)
        self.built += size
        return value

    def size(self, value: Any) -> int:
        size, visited = _size(value, MAX_VALUE)
        if visited > 1:
            self.tick(visited // 10)
        return size


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _current() -> _Budget:
    budget = _budget.get()
    return budget if budget is not None else _Budget(DEFAULT_LIMITS)


def _digits(number: int) -> int:
    return number.bit_length() * 3 // 10 + 2


def _size(value: Any, limit: int) -> tuple[int, int]:
    """(size, objects visited): about the length of ``str(value)``, contents included; stops past ``limit``.

    Shared references count every time they appear, as they would once turned into text.
    """
    total = 0
    visited = 0
    stack = [value]
    while stack:
        item = stack.pop()
        visited += 1
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += _digits(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item) + 2
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += 2 * len(item) + 2
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, Fields):
            total += 2 * len(item) + 2
            if total <= limit:
                stack.extend(item._values.keys())
                stack.extend(item._values.values())
        elif isinstance(item, range):
            total += len(item) * (_digits(max(abs(item.start), abs(item.stop))) + 2)
        elif isinstance(item, Decimal):
            total += len(item.as_tuple().digits) + abs(item.adjusted()) + 3
        else:
            total += 32  # floats, datetimes, undefined values, generators (counted when consumed)
        if total > limit or visited > limit:
            break
    return total, visited


# --- sizing the amplifiers -----------------------------------------------------------------------

_UNKNOWN: Any = object()
"""An argument not known at save time."""

_PERCENT = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+)?)?[hlL]?([a-zA-Z%])")
_FORMAT_SPEC = re.compile(r"^(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[_,]?(?:\.(\d+))?[a-zA-Z%]?$")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecurityError(f"{what} must be an integer")
    if value > MAX_VALUE:
        raise SecurityError(f"{what} {value} is larger than {MAX_VALUE}")
    return value


def _text_size(value: Any) -> int:
    return 0 if value is _UNKNOWN else _current().size(value)


def _percent_size(template: str, values: Any) -> int:
    """The size of ``template % values``, refusing widths and precisions past MAX_VALUE."""
    if values is _UNKNOWN:
        positional: list[Any] = []
        named: Any = _UNKNOWN
    elif isinstance(values, tuple):
        positional, named = list(values), {}
    else:
        positional, named = [values], values
    size = len(template)
    for match in _PERCENT.finditer(template):
        key, width, precision, conversion = match.groups()
        numbers = []
        for part in (width, precision):
            if part == "*":
                numbers.append(positional.pop(0) if positional else 0)
            elif part:
                numbers.append(int(part))
        for number in numbers:
            if isinstance(number, int) and abs(number) > MAX_VALUE:
                raise SecurityError(f"format width or precision {number} is larger than {MAX_VALUE}")
        if conversion == "%":
            continue
        if key is not None:
            argument = named.get(key, _UNKNOWN) if isinstance(named, Mapping) else _UNKNOWN
        else:
            argument = positional.pop(0) if positional else _UNKNOWN
        widest = max((abs(n) for n in numbers if isinstance(n, int)), default=0)
        size += widest + _text_size(argument) + 32
    return size


def _format_spec_size(spec: str) -> int:
    """The most a ``str.format`` spec pads to, refusing widths and precisions past MAX_VALUE."""
    match = _FORMAT_SPEC.match(spec)
    if match is None:
        return 0  # not a spec Python accepts: format() will refuse it
    numbers = [int(n) for n in match.groups() if n]
    for number in numbers:
        if number > MAX_VALUE:
            raise SecurityError(f"format width or precision {number} is larger than {MAX_VALUE}")
    return sum(numbers)


def _check_format_string(template: str) -> None:
    """Save time: refuse literal widths past MAX_VALUE in a ``str.format`` template."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return
    for _, _, spec, _ in fields:
        if spec and "{" not in spec:
            _format_spec_size(spec)


class _CheckedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _current()
        budget.tick()
        budget.allow(_format_spec_size(format_spec) + budget.size(value))
        if isinstance(value, Decimal) and format_spec[-1:] in ("f", "F", "%"):
            budget.allow(abs(value.adjusted()) + len(value.as_tuple().digits))
        return super().format_field(value, format_spec)


class _CheckedEscapeFormatter(SandboxedEscapeFormatter, _CheckedFormatter):
    pass


# Checks run before a filter or method does its work: (value, *args, **kwargs), where any of
# them may be _UNKNOWN at save time. Each returns the size of the result it allows.


def _pad(value: Any, width: Any = 80, *_: Any) -> int:
    return max(_text_size(value), _count(width, "width") if width is not _UNKNOWN else 0)


def _indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    if width is _UNKNOWN:
        return 0
    indent = len(width) if isinstance(width, str) else _count(width, "indent width")
    if value is _UNKNOWN:
        return indent
    text = str(value)
    return len(text) + (text.count("\n") + 1) * indent


def _wordwrap(
    value: Any, width: Any = 79, long_words: Any = True, wrapstring: Any = None, *_: Any, **__: Any
) -> int:
    if value is _UNKNOWN or wrapstring is _UNKNOWN:
        return 0
    text = str(value)
    # Each break inserts the wrap string: at most at every space, hyphen and line end, plus
    # once per ``width`` characters of a word too long for a line.
    per_line = width if isinstance(width, int) and width > 0 else 1
    breaks = sum(text.count(c) for c in " \t-\n") + len(text) // per_line + 1
    return len(text) + min(breaks, len(text) + 1) * (len(str(wrapstring)) if wrapstring is not None else 1)


def _join_items(value: Any, d: Any = "", *_: Any, **__: Any) -> int:
    if value is _UNKNOWN or d is _UNKNOWN:
        return 0
    items = value if isinstance(value, list | tuple | str | range) else []
    return _text_size(list(items)) + len(str(d)) * len(items)


def _replace(value: Any, old: Any = _UNKNOWN, new: Any = _UNKNOWN, count: Any = -1, *_: Any) -> int:
    if _UNKNOWN in (value, old, new, count) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    text = str(value)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _batch(value: Any, linecount: Any = _UNKNOWN, fill_with: Any = None, *_: Any) -> int:
    if linecount is not _UNKNOWN:
        _count(linecount, "batch size")
    return 0


def _slice(value: Any, slices: Any = _UNKNOWN, *_: Any) -> int:
    if slices is not _UNKNOWN:
        _count(slices, "number of slices")
    return 0


def _tojson(value: Any, indent: Any = None, *_: Any) -> int:
    if indent is not None and indent is not _UNKNOWN:
        width = len(indent) if isinstance(indent, str) else indent
        if not isinstance(width, int) or width > 16:
            raise SecurityError("tojson indent must be at most 16")
    return 0


def _urlize(value: Any, *args: Any, **kwargs: Any) -> int:
    for extra in (*args[2:4], kwargs.get("target"), kwargs.get("rel")):
        if isinstance(extra, str) and len(extra) > 200:
            raise SecurityError("urlize target and rel must be at most 200 characters")
    schemes = args[4] if len(args) > 4 else kwargs.get("extra_schemes")
    if schemes not in (None, _UNKNOWN) and len(list(schemes)) > 20:
        raise SecurityError("urlize takes at most 20 extra schemes")
    # Every link is written out at most three times, plus its attributes.
    return 0 if value is _UNKNOWN else len(str(value)) * 4 + 1000


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> int:
    if value is _UNKNOWN or not isinstance(value, str):
        return 0
    return _percent_size(value, kwargs or (_UNKNOWN if _UNKNOWN in args else tuple(args)))


def _sum(value: Any, attribute: Any = None, start: Any = 0, *_: Any) -> int:
    if start is not _UNKNOWN and not isinstance(start, int | float | Decimal):
        raise SecurityError("sum adds numbers; its start must be a number")
    return 0


def _int(value: Any, *_: Any, **__: Any) -> int:
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() > 4300:
        raise SecurityError("the number is too large to convert to an integer")
    return 0


def _strftime(value: Any, template: Any = _UNKNOWN, *_: Any) -> int:
    if isinstance(template, str):
        if len(template) > MAX_STRFTIME_FORMAT:
            raise SecurityError(f"strftime formats are at most {MAX_STRFTIME_FORMAT} characters")
        return 256 * len(template)
    return 0


_FILTER_CHECKS: dict[str, Callable[..., int]] = {
    "center": _pad,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "join": _join_items,
    "replace": _replace,
    "batch": _batch,
    "slice": _slice,
    "tojson": _tojson,
    "urlize": _urlize,
    "format": _format_filter,
    "sum": _sum,
    "int": _int,
}

_METHOD_CHECKS: dict[str, Callable[..., int]] = {
    "center": _pad,
    "ljust": _pad,
    "rjust": _pad,
    "zfill": _pad,
    "replace": _replace,
    "strftime": _strftime,
}

_STR_METHODS = frozenset(
    "capitalize casefold center count endswith find format format_map index isalnum isalpha isascii "
    "isdecimal isdigit islower isnumeric isspace istitle isupper join ljust lower lstrip partition "
    "removeprefix removesuffix replace rfind rindex rjust rpartition rsplit rstrip split splitlines "
    "startswith strip swapcase title upper zfill".split()
)
_ALLOWED_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (Markup, _STR_METHODS | {"escape", "striptags", "unescape"}),
    (str, _STR_METHODS),
    ((list, tuple, range), frozenset({"count", "index"})),
    (dict, frozenset({"get", "items", "keys", "values"})),
    (
        (dt.datetime, dt.date),
        frozenset({"strftime", "isoformat", "date", "weekday", "isoweekday", "timestamp"}),
    ),
    (float, frozenset({"is_integer"})),
    (LoopContext, frozenset({"cycle", "changed"})),
    (Cycler, frozenset({"next", "reset"})),
)
_ANY_METHOD = frozenset().union(*(names for _, names in _ALLOWED_METHODS))
_CALLABLE_TYPES = (Macro, LoopContext, Joiner, BlockReference, Undefined)  # calling Undefined raises
_CALLABLE_OBJECTS = (dict, safe_range, Namespace, Cycler, Joiner)


def _method_allowed(method: Any) -> bool:
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if owner is None or isinstance(owner, type):
        return False
    return any(isinstance(owner, kind) and name in names for kind, names in _ALLOWED_METHODS)


def _join(separator: str, items: Iterable[Any]) -> str:
    """``separator.join(items)``, sized before the text is built."""
    budget = _current()
    listed = list(items)
    budget.tick(1 + len(listed))
    budget.allow(budget.size(listed) + len(separator) * len(listed))
    return separator.join(listed)


def _before_call(
    budget: _Budget, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], Any]:
    """Check a call before it happens: (the arguments to call with, the result when it was computed here
    or _UNKNOWN)."""
    if isinstance(function, types.BuiltinMethodType | types.MethodType):
        if not _method_allowed(function):
            kind = type(getattr(function, "__self__", None)).__name__
            raise SecurityError(f"{kind}.{function.__name__}() is not available in templates")
        owner: Any = function.__self__
        name = function.__name__
        budget.tick(budget.size(owner) // 100)
        if isinstance(owner, str) and name == "join" and len(args) == 1 and not kwargs:
            return args, _join(owner, args[0])
        check = _METHOD_CHECKS.get(name)
        if check is not None:
            budget.allow(check(owner, *args, **kwargs))
    elif isinstance(function, LoopContext) and args:
        args = (_counted(args[0]), *args[1:])  # a recursive loop's next level
    elif isinstance(function, types.FunctionType) and getattr(function, "__wrapped__", None) is not None:
        pass  # str.format / format_map, sandboxed by _Sandbox.wrap_str_format
    elif not isinstance(function, _CALLABLE_TYPES) and not any(function is c for c in _CALLABLE_OBJECTS):
        raise SecurityError(f"{type(function).__name__} objects cannot be called in templates")
    return args, _UNKNOWN


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context: Context | None, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        budget.tick()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and abs(left).bit_length() * max(abs(int(right)), 1) > 4096:
                raise SecurityError("power too large")
        elif operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                    budget.allow(budget.size(sequence) * max(count, 0))
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > 4096:
                    raise SecurityError("number too large")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                budget.allow(budget.size(left) + budget.size(right))
        elif operator == "%" and isinstance(left, str):
            budget.allow(_percent_size(left, right))
        return budget.take(self.binop_table[operator](left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        args, result = _before_call(budget, __obj, args, kwargs)
        if result is _UNKNOWN:
            result = super().call(__context, __obj, *args, **kwargs)
        return budget.take(result)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _current().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner: Any = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: SandboxedFormatter = (
            _CheckedEscapeFormatter(self, escape=owner.escape)
            if isinstance(owner, Markup)
            else _CheckedFormatter(self)
        )
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return type(owner)(formatter.vformat(owner, (), args[0]))
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)


def _counted(iterable: Any) -> Iterator[Any]:
    """Iterate, counting a step per item (loops and recursive loops)."""
    budget = _current()
    for item in iterable:
        budget.tick()
        yield item


def _built(value: Any) -> Any:
    return _current().take(value)


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = _PassArg.from_obj(function)
    skip = 1 if pass_arg is not None else 0
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        value = args[skip] if len(args) > skip else None
        if name == "join" and not isinstance(value, str | list | tuple):
            value = list(_counted(value))  # sized before the text is built
            args = (*args[:skip], value, *args[skip + 1 :])
        budget.tick(1 + _walk_cost(value))
        if check is not None:
            budget.allow(check(*args[skip:], **kwargs))
        return budget.take(function(*args, **kwargs))

    return checked


def _walk_cost(value: Any) -> int:
    """Steps to walk a filter's input: one per item, one per 100 characters."""
    if isinstance(value, str):
        return len(value) // 100
    if isinstance(value, list | tuple | dict | range | set | frozenset | Fields):
        return len(value)
    return 0


def _checked_test(function: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = _PassArg.from_obj(function)
    skip = 1 if pass_arg is not None else 0

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _current().tick(1 + sum(_walk_cost(a) for a in args[skip:]))
        return function(*args, **kwargs)

    return checked


class _Undefined(StrictUndefined):
    """Names the missing variable the way the template author wrote it."""

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if isinstance(owner, Fields) and isinstance(self._undefined_name, str):
            return f"{owner._path} has no field {self._undefined_name!r}"
        return str(super()._undefined_message)


def _environment(autoescape: bool) -> _Sandbox:
    # optimized=False: Jinja's optimizer would run constant parts at compile time, unchecked.
    env = _Sandbox(
        undefined=_Undefined, autoescape=autoescape, auto_reload=False, cache_size=0, optimized=False
    )
    env.filters.pop("attr", None)
    env.globals.pop("lipsum", None)  # lorem ipsum of any size: no use in a message
    env.filters = {name: _checked_filter(name, f) for name, f in env.filters.items()}
    env.filters[_LOOP] = _counted
    env.filters[_BUILT] = _built
    env.tests = {name: _checked_test(test) for name, test in env.tests.items()}  # type: ignore[arg-type]
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


class TemplateProblem(Exception):
    """A template is refused at save time; ``line`` is 1-based when known."""

    def __init__(self, description: str, line: int | None) -> None:
        self.line = line
        self.description = f"line {line}: {description}" if line else description
        super().__init__(self.description)


def _refuse_unsafe(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter, nodes.Call)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            raise TemplateProblem("the attr filter is not allowed", node.lineno)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            owner = node.node.node
            block = isinstance(owner, nodes.Name) and owner.name == "self"  # self.<block>()
            if node.node.attr not in _ANY_METHOD and not block:
                raise TemplateProblem(
                    f"the method {node.node.attr}() is not available in templates", node.lineno
                )
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(f"names starting with '_' are not allowed: {name!r}", node.lineno)


# --- save-time checks: constant parts and loops ---------------------------------------------------


class _NotConstant(Exception):
    pass


_REFUSALS = (SecurityError, OverflowError, MemoryError, RecursionError)
_CONSTANT_FILTERS = frozenset(
    "batch center format indent int join length list lower replace round slice string sum title tojson "
    "trim truncate upper wordwrap".split()
)
_BINOPS: dict[type[nodes.BinExpr], str] = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Mod: "%",
    nodes.Pow: "**",
}


class _Static:
    """Save time: evaluates the constant parts of a template with the render-time checks (so what
    would be refused at every render is refused now), and sizes loops over constant ranges."""

    def __init__(self, env: _Sandbox, limits: Limits) -> None:
        self.env = env
        self.limits = limits
        self.names: dict[str, Any] = {}
        self.at: nodes.Node | None = None
        """The node being checked, for the line of a refusal."""
        self._memo: dict[int, Any] = {}

    def value(self, node: nodes.Node) -> Any:
        """The value of a constant expression; raises _NotConstant, or SecurityError & co. when refused."""
        key = id(node)
        if key not in self._memo:
            try:
                self._memo[key] = self._evaluate(node)
            except _NotConstant:
                self._memo[key] = _UNKNOWN
            except _REFUSALS:
                raise
            except Exception:  # a TypeError, a division by zero...: the render will say so
                self._memo[key] = _UNKNOWN
        found = self._memo[key]
        if found is _UNKNOWN:
            raise _NotConstant
        return found

    def known(self, node: nodes.Node | None) -> Any:
        """The value of ``node``, or _UNKNOWN."""
        if node is None:
            return _UNKNOWN
        try:
            return self.value(node)
        except _NotConstant:
            return _UNKNOWN

    def _evaluate(self, node: nodes.Node) -> Any:
        if isinstance(node, nodes.Const):
            return node.value
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in self.names:
            return self.names[node.name]
        if isinstance(node, nodes.List):
            return [self.value(item) for item in node.items]
        if isinstance(node, nodes.Tuple):
            return tuple(self.value(item) for item in node.items)
        if isinstance(node, nodes.Neg):
            return -self.value(node.node)
        operator = _BINOPS.get(type(node))  # type: ignore[arg-type]
        if operator is not None:
            assert isinstance(node, nodes.BinExpr)
            return self.env.call_binop(None, operator, self.value(node.left), self.value(node.right))
        if isinstance(node, nodes.Concat):
            return _built("".join(str(self.value(part)) for part in node.nodes))
        if isinstance(node, nodes.Filter) and node.node is not None and node.name in _CONSTANT_FILTERS:
            return self._filter(node, self.value(node.node))
        if isinstance(node, nodes.Call) and not node.dyn_args and not node.dyn_kwargs:
            args = tuple(self.value(a) for a in node.args)
            kwargs = {str(k.key): self.value(k.value) for k in node.kwargs}
            if isinstance(node.node, nodes.Name) and node.node.name == "range" and "range" not in self.names:
                return safe_range(*args, **kwargs)
            if isinstance(node.node, nodes.Getattr):
                method = self.env.getattr(self.value(node.node.node), node.node.attr)
                budget = _current()
                args, result = _before_call(budget, method, args, kwargs)
                return budget.take(method(*args, **kwargs) if result is _UNKNOWN else result)
        raise _NotConstant

    def _filter(self, node: nodes.Filter, value: Any) -> Any:
        if node.dyn_args or node.dyn_kwargs:
            raise _NotConstant
        args = [self.value(a) for a in node.args]
        kwargs = {str(k.key): self.value(k.value) for k in node.kwargs}
        function = self.env.filters[node.name]
        pass_arg = _PassArg.from_obj(function)
        first: list[Any] = []
        if pass_arg is _PassArg.environment:
            first = [self.env]
        elif pass_arg is _PassArg.eval_context:
            first = [nodes.EvalContext(self.env)]
        elif pass_arg is not None:
            raise _NotConstant
        result = function(*first, value, *args, **kwargs)
        return list(result) if isinstance(result, types.GeneratorType) else result

    def check(self, tree: nodes.Template) -> None:
        """Raise TemplateProblem, or SecurityError & co. with ``at`` set, for what can never render."""
        stored: dict[str, int] = {}
        for name in tree.find_all(nodes.Name):
            if name.ctx in ("store", "param"):
                stored[name.name] = stored.get(name.name, 0) + 1
        for assign in tree.find_all(nodes.Assign):
            target = assign.target
            if isinstance(target, nodes.Name) and stored.get(target.name) == 1:
                self.at = assign
                value = self.known(assign.node)
                if value is not _UNKNOWN:
                    self.names[target.name] = value
        self._memo.clear()  # values computed before the names were known
        for node in tree.find_all(nodes.Expr):
            self.at = node
            self._expression(node)
        self.at = None
        self._loops(tree.body, 1)

    def _expression(self, node: nodes.Expr) -> None:
        if self.known(node) is not _UNKNOWN:
            return
        try:
            self._constant_arguments(node)
        except _REFUSALS:
            raise
        except Exception:  # arguments of the wrong type: the render will say so
            pass

    def _constant_arguments(self, node: nodes.Expr) -> None:
        """Not constant as a whole: the parts that are may still be refused on their own."""
        if isinstance(node, nodes.Filter) and node.name in _FILTER_CHECKS:
            args = [self.known(a) for a in node.args]
            kwargs = {str(k.key): self.known(k.value) for k in node.kwargs}
            _FILTER_CHECKS[node.name](self.known(node.node), *args, **kwargs)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            name = node.node.attr
            owner = self.known(node.node.node)
            args = [self.known(a) for a in node.args]
            if name in _METHOD_CHECKS:
                _METHOD_CHECKS[name](owner, *args)
            elif name in ("format", "format_map") and isinstance(owner, str):
                _check_format_string(owner)
        elif isinstance(node, nodes.Mod):
            template = self.known(node.left)
            if isinstance(template, str):
                _percent_size(template, _UNKNOWN)

    def _loops(self, body: Iterable[nodes.Node], runs: int) -> None:
        for node in body:
            if isinstance(node, nodes.For):
                iterated = self.known(node.iter)
                size = len(iterated) if isinstance(iterated, str | list | tuple | range | dict) else 1
                total = runs * max(size, 1)
                if total > self.limits.steps:
                    raise TemplateProblem(
                        f"the loops here run {total} times; a template may take at most "
                        f"{self.limits.steps} steps",
                        node.lineno,
                    )
                self._loops(node.body, total)
                self._loops(node.else_, runs)
            else:
                self._loops(node.iter_child_nodes(), runs)


class _Instrument(NodeTransformer):
    """Counts loop iterations and sizes what concatenation, slicing and ``{% set %}`` blocks build."""

    def _wrap(self, node: nodes.Node, name: str) -> nodes.Filter:
        return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._wrap(node.iter, _LOOP)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._wrap(node, _BUILT)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        return self._wrap(node, _BUILT) if isinstance(node.arg, nodes.Slice) else node

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
        self.generic_visit(node)
        inner = node.filter if node.filter is not None else None
        node.filter = nodes.Filter(inner, _BUILT, [], [], None, None, lineno=node.lineno)
        return node


@dataclass(frozen=True)
class Template:
    """A compiled template; ``source`` is what the campaign stores."""

    source: str
    html: bool
    compiled: Any

    def render(self, variables: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
        return render(self, variables, limits)


def compile_template(source: str, *, html: bool = False, limits: Limits = DEFAULT_LIMITS) -> Template:
    """Compile ``source`` or raise ``TemplateProblem`` naming the line."""
    env = _HTML if html else _TEXT
    token = _budget.set(_Budget(limits))
    static = _Static(env, limits)
    try:
        tree = env.parse(source)
        _refuse_unsafe(tree)
        static.check(tree)
        tree = _Instrument().visit(tree)
        tree.set_environment(env)
        compiled = env.from_string(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from None
    except _REFUSALS as exc:
        line = static.at.lineno if static.at is not None else None
        raise TemplateProblem(f"refused by the sandbox: {exc}", line) from None
    except TemplateError as exc:
        raise TemplateProblem(str(exc), None) from None
    finally:
        _budget.reset(token)
    return Template(source, html, compiled)


def render(template: Template, variables: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
    """Render within the budget and size limits, or raise ``RenderError``."""
    budget = _Budget(limits)
    token = _budget.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.compiled.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"output longer than {MAX_OUTPUT_CHARS} characters")
            parts.append(chunk)
            budget.tick()
        return "".join(parts)
    except UndefinedError as exc:
        raise RenderError(f"undefined variable: {exc.message}") from None
    except SecurityError as exc:
        raise RenderError(f"refused by the sandbox: {exc}") from None
    except (OverflowError, MemoryError) as exc:
        raise RenderError(f"refused by the sandbox: {type(exc).__name__} {exc}".strip()) from None
    except RecursionError:
        raise RenderError("refused by the sandbox: recursion too deep") from None
    except Exception as exc:
        raise RenderError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        _budget.reset(token)


class Fields:
    """A read-only map whose keys are reachable as attributes (``client.eventContext.item_id``).

    Unlike a dict it has no methods that could shadow a field code such as
    ``items`` or ``keys``.
    """

    __slots__ = ("_path", "_values")

    def __init__(self, path: str, values: Mapping[str, Any]) -> None:
        self._path = path
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __str__(self) -> str:
        return str(self._values)


def variables(
    *,
    customer_id: str,
    email: str,
    phone: str,
    attributes: Mapping[str, Any],
    context: Mapping[str, Any],
    event_name: str,
    event_id: str,
    occurred_at: dt.datetime | None,
) -> dict[str, Any]:
    """The template variables for one customer and one trigger event."""
    client: dict[str, Any] = dict(attributes)
    client.update(
        customer_id=customer_id,
        email=email,
        phone=phone,
        attributes=Fields("client.attributes", attributes),
        eventContext=Fields("client.eventContext", context),
    )
    return {
        "client": Fields("client", client),
        "event": Fields("event", {"name": event_name, "event_id": event_id, "occurred_at": occurred_at}),
    }
