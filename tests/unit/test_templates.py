"""Campaign templates: sandbox, strict variables, escaping and the save-time checks."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventline_campaigns.templates import RenderError, TemplateProblem, compile_template, variables


def render(source: str, html: bool = False, **context: object) -> str:
    template = compile_template(source, html=html)
    return template.render(
        variables(
            customer_id="c1",
            email="c1@example.com",
            phone="",
            attributes={"tier": "gold", "items": 3},
            context=context,
            event_name="ItemInStock",
            event_id="e1",
            occurred_at=None,
        )
    )


def test_the_customers_syntax_renders_the_context() -> None:
    assert (
        render("{{ client.eventContext.item_name }} is back", item_name="Blue kettle")
        == "Blue kettle is back"
    )
    assert (
        render("{{ client.tier }}/{{ client.attributes.tier }}/{{ event.name }}") == "gold/gold/ItemInStock"
    )
    # Field codes that are also dict method names are plain fields.
    assert render("{{ client.eventContext.items }} {{ client.attributes.items }}", items="x") == "x 3"


def test_a_missing_variable_fails_the_render_naming_it() -> None:
    with pytest.raises(RenderError, match=r"client\.eventContext has no field 'reset_link'"):
        render("Reset: {{ client.eventContext.reset_link }}")
    with pytest.raises(RenderError, match="'nobody' is undefined"):
        render("{{ nobody }}")


def test_html_is_autoescaped_and_text_is_not() -> None:
    assert render("<p>{{ client.eventContext.x }}</p>", html=True, x="<b>&") == "<p>&lt;b&gt;&amp;</p>"
    assert render("{{ client.eventContext.x }}", x="<b>&") == "<b>&"


@given(st.text(max_size=50).map(lambda s: "{{ " + s + " }}{% if 1 %}"))
def test_template_syntax_inside_a_context_value_is_text(text: str) -> None:
    assert render("{{ client.eventContext.x }}", x=text) == text


@pytest.mark.parametrize(
    ("source", "line"),
    [("ok\n{{ x ]]", 2), ("{% for %}", 1), ("a\nb\n{% if x %}", 3), ("{{ x|no_such_filter }}", 1)],
)
def test_syntax_errors_name_the_line(source: str, line: int) -> None:
    with pytest.raises(TemplateProblem) as problem:
        compile_template(source)
    assert problem.value.line == line
    assert problem.value.description.startswith(f"line {line}:")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ client|attr('__class__') }}",
        "{{ client['_values'] }}",
        "{% set _x = 1 %}",
    ],
)
def test_attacks_are_refused_at_save_time(source: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_template(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(10**9)|list }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
        "{{ 'a' * 10**9 }}",
        "{{ 7 ** 100000 }}",
        "{{ (2 ** 99) ** 99 }}",
        "{{ '{0.__class__}'.format(1) }}",
    ],
)
def test_expensive_or_unsafe_constant_parts_are_refused_at_save_time(source: str) -> None:
    """What would fail at every render fails at save time (these failed at render before)."""
    with pytest.raises(TemplateProblem, match="line 1: "):
        compile_template(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(client.eventContext.n * 10000)|list }}",
        "{% for i in range(client.eventContext.n) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(client.eventContext.n) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
        "{{ 'a' * client.eventContext.n ** 2 }}",
        "{{ 7 ** client.eventContext.n }}",
        "{{ (2 ** 99) ** client.eventContext.small }}",
        "{{ client.eventContext.x.format(1) }}",
        "{{ client.eventContext.x.format(client) }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_expensive_or_unsafe_renders_fail_fast(source: str) -> None:
    # Failing at all is the promise (a render that ran on would hit the test's timeout); how
    # fast is the budget's business, not a wall-clock assertion on a shared machine.
    with pytest.raises(RenderError):
        render(source, x="{0.__class__}", n=100000, small=99)


_FILTERS = [
    "center",
    "indent",
    "wordwrap",
    "join",
    "replace",
    "batch",
    "slice",
    "tojson",
    "format",
    "truncate",
    "list",
    "string",
    "sum",
    "int",
    "upper",
    "urlize",
    "sort",
    "unique",
    "map",
    "first",
    "length",
]
_METHODS = [
    "center",
    "ljust",
    "rjust",
    "zfill",
    "replace",
    "join",
    "format",
    "split",
    "upper",
    "count",
    "get",
]
_VALUES = [
    "1",
    "10**9",
    "-1",
    "0",
    "'x'",
    "'%s'",
    "'{}'",
    "'ab' * 1000",
    "[1, 2]",
    "none",
    "3.5",
    "range(10)",
    "client.eventContext.w",
    "client.eventContext.s",
    "client",
]


@st.composite
def _expressions(draw: st.DrawFn) -> str:
    expression = draw(st.sampled_from(_VALUES))
    for _ in range(draw(st.integers(0, 3))):
        args = ", ".join(draw(st.lists(st.sampled_from(_VALUES), max_size=2)))
        kind = draw(st.sampled_from(["filter", "method", "operator"]))
        if kind == "filter":
            expression = f"({expression})|{draw(st.sampled_from(_FILTERS))}({args})"
        elif kind == "method":
            expression = f"({expression}).{draw(st.sampled_from(_METHODS))}({args})"
        else:
            expression = f"({expression}) {draw(st.sampled_from(['*', '%', '+', '~', '**']))} {draw(st.sampled_from(_VALUES))}"
    return "{{ " + expression + " }}"


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_any_chain_of_filters_methods_and_operators_is_refused_or_renders_within_memory(source: str) -> None:
    """The whole class of item 2 (issue 10): whatever the arguments, a template is refused at save
    time, or renders, or fails with a reason - and never allocates more than a few megabytes."""
    try:
        template = compile_template(source)
    except TemplateProblem:
        return
    tracemalloc.start()
    try:
        template.render(
            variables(
                customer_id="c1",
                email="c1@example.com",
                phone="",
                attributes={},
                context={"w": 10**9, "s": "a\tb"},
                event_name="E",
                event_id="e1",
                occurred_at=None,
            )
        )
    except RenderError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{source} allocated {peak / 2**20:.0f} MB"
