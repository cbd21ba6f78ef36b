"""Message templates: Jinja2 in a sandbox, checked at save time, rendered with a budget.

Variables:

* ``client``: the customer: ``customer_id``, ``email``, ``phone``,
  ``attributes.<code>`` (also reachable as ``client.<code>`` when the code is
  not one of the names above) and ``eventContext.<field_code>``, the trigger
  event's context - the syntax customers already use.
* ``event``: ``name``, ``event_id``, ``occurred_at`` of the trigger event.

Safety:

* ``ImmutableSandboxedEnvironment``: no ``__class__``/``__mro__`` walks, no
  ``str.format`` tricks, no mutation of lists or dicts.
* At save time the template is compiled (syntax errors name the line) and
  refused when it names an attribute starting with ``_`` or uses the ``attr``
  filter, so the usual attacks fail before a campaign exists.
* At render time every call and every ``*``/``**`` is checked against a time
  budget and a size limit (``range`` is capped by Jinja at 100,000 items), and
  the output is built chunk by chunk with a size limit: an attack fails fast
  instead of burning a core.
* Undefined variables raise (``StrictUndefined``): a delivery fails with the
  reason recorded rather than sending a half-rendered message.
* Values are data, never templates: a ``{{ }}`` inside a context value is
  rendered as text. HTML bodies are autoescaped.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

RENDER_BUDGET_S = 0.05
"""CPU time one template may take to render (its own thread's CPU, so a busy machine does not fail it)."""
RENDER_WALL_LIMIT_S = 2.0
"""Wall-clock time past which a render fails whatever its CPU time."""
MAX_OUTPUT_CHARS = 1_000_000
"""The largest rendered template (an e-mail body)."""
MAX_OPERAND = 100_000
"""The largest sequence a template may build with ``*`` and the largest power base/exponent product."""

# (wall-clock time after which CPU time is checked, thread CPU time at the start, start)
_budget: contextvars.ContextVar[tuple[float, float, float] | None] = contextvars.ContextVar(
    "template_budget", default=None
)


class RenderError(Exception):
    """A template could not be rendered; the message says why, for the delivery's reason."""


def _check_budget() -> None:
    budget = _budget.get()
    if budget is None:
        return
    check_after, cpu_start, started = budget
    now = time.monotonic()
    if now <= check_after:
        return  # the common case: one clock read
    if time.thread_time() - cpu_start > RENDER_BUDGET_S or now - started > RENDER_WALL_LIMIT_S:
        raise SecurityError(f"rendering took longer than {int(RENDER_BUDGET_S * 1000)} ms")


def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_budget()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and abs(left).bit_length() * max(abs(int(right)), 1) > 4096:
                raise SecurityError("power too large")
        elif operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                    if _size(sequence) * count > MAX_OPERAND:
                        raise SecurityError("sequence too large")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > 4096:
                    raise SecurityError("number too large")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_budget()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_budget()
        return super().getattr(obj, attribute)


class _Undefined(StrictUndefined):
    """Names the missing variable the way the template author wrote it."""

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if isinstance(owner, Fields) and isinstance(self._undefined_name, str):
            return f"{owner._path} has no field {self._undefined_name!r}"
        return str(super()._undefined_message)


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=_Undefined, autoescape=autoescape, auto_reload=False, cache_size=0)
    env.filters.pop("attr", None)
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
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            raise TemplateProblem("the attr filter is not allowed", node.lineno)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(f"names starting with '_' are not allowed: {name!r}", node.lineno)


@dataclass(frozen=True)
class Template:
    """A compiled template; ``source`` is what the campaign stores."""

    source: str
    html: bool
    compiled: Any

    def render(self, variables: Mapping[str, Any]) -> str:
        return render(self, variables)


def compile_template(source: str, *, html: bool = False) -> Template:
    """Compile ``source`` or raise ``TemplateProblem`` naming the line."""
    env = _HTML if html else _TEXT
    try:
        tree = env.parse(source)
        _refuse_unsafe(tree)
        compiled = env.from_string(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from None
    except TemplateError as exc:
        raise TemplateProblem(str(exc), None) from None
    return Template(source, html, compiled)


def render(template: Template, variables: Mapping[str, Any]) -> str:
    """Render within the time budget and size limit, or raise ``RenderError``."""
    started = time.monotonic()
    token = _budget.set((started + RENDER_BUDGET_S, time.thread_time(), started))
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.compiled.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"output longer than {MAX_OUTPUT_CHARS} characters")
            parts.append(chunk)
            _check_budget()
        return "".join(parts)
    except UndefinedError as exc:
        raise RenderError(f"undefined variable: {exc.message}") from None
    except SecurityError as exc:
        raise RenderError(f"refused by the sandbox: {exc}") from None
    except OverflowError as exc:
        raise RenderError(f"refused by the sandbox: {exc}") from None
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
