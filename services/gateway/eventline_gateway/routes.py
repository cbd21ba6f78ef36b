"""The HTTP routes of the API, as the protos' ``google.api.http`` annotations declare them.

One reading of ``HttpRule`` (``protos/third_party/google/api/http.proto``) serves the
transcoder at run time and the OpenAPI generator at build time, so the two cannot
disagree. Path templates follow the grammar of that file::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Matching is done on the raw (still percent-encoded) path, so that an encoded ``/`` or
``:`` inside a value never splits a segment or passes for a verb; values are decoded
afterwards (a single-segment variable entirely, a multi-segment one except ``%2F``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}:*=]+")
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A path template that does not follow the grammar, or names no field of the request."""


@dataclass(frozen=True)
class Variable:
    """``{field.path=segments}``: the request field a part of the path sets."""

    field_path: tuple[str, ...]
    segments: tuple[str, ...]
    """The sub-template the value matches: ``("*",)`` for one segment (the default)."""

    @property
    def name(self) -> str:
        return ".".join(self.field_path)

    @property
    def single_segment(self) -> bool:
        return self.segments == ("*",)


Segment = str | Variable
"""A literal, ``*``, ``**`` or a variable."""


@dataclass(frozen=True)
class PathTemplate:
    text: str
    segments: tuple[Segment, ...]
    verb: str

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        if not text.startswith("/"):
            raise TemplateError(f"{text!r}: a path template starts with '/'")
        parser = _Parser(text, 1)
        segments = parser.segments(top=True)
        verb = ""
        if parser.peek(":"):
            parser.position += 1
            verb = parser.literal()
        if parser.position != len(text):
            raise TemplateError(f"{text!r}: unexpected {text[parser.position :]!r}")
        if (
            segments.count("**") + sum(v.segments.count("**") for v in segments if isinstance(v, Variable))
            > 1
        ):
            raise TemplateError(f"{text!r}: '**' may appear once")
        return cls(text, tuple(segments), verb)

    @property
    def variables(self) -> list[Variable]:
        return [segment for segment in self.segments if isinstance(segment, Variable)]

    def pattern(self) -> re.Pattern[str]:
        """A regular expression over raw paths; group ``v<i>`` holds the i-th variable's raw text."""
        parts = []
        index = 0
        for segment in self.segments:
            if isinstance(segment, Variable):
                parts.append(f"(?P<v{index}>{_segments_pattern(segment.segments)})")
                index += 1
            else:
                parts.append(_segments_pattern((segment,)))
        verb = ":" + re.escape(self.verb) if self.verb else ""
        return re.compile("/" + "/".join(parts) + verb)

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: each variable ``{field.path}``, the rest literal."""
        parts = [f"{{{s.name}}}" if isinstance(s, Variable) else s for s in self.segments]
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")


def _segments_pattern(segments: tuple[str, ...]) -> str:
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append("[^/]+(?:/[^/]+)*")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def decode(raw: str, variable: Variable) -> str:
    """A variable's value from its raw text: ``%2F`` stays encoded in multi-segment values."""
    if variable.single_segment:
        return unquote(raw, errors="strict")
    return "%2F".join(unquote(part, errors="strict") for part in re.split("%2[Ff]", raw))


class _Parser:
    def __init__(self, text: str, position: int) -> None:
        self.text = text
        self.position = position

    def peek(self, char: str) -> bool:
        return self.text.startswith(char, self.position)

    def expect(self, char: str) -> None:
        if not self.peek(char):
            raise TemplateError(f"{self.text!r}: expected {char!r} at {self.position}")
        self.position += 1

    def literal(self) -> str:
        return self._take(_LITERAL, "a literal")

    def _take(self, pattern: re.Pattern[str], what: str) -> str:
        match = pattern.match(self.text, self.position)
        if not match:
            raise TemplateError(f"{self.text!r}: expected {what} at {self.position}")
        self.position = match.end()
        return match.group()

    def segments(self, top: bool) -> list[Segment]:
        found = [self.segment(top)]
        while self.peek("/"):
            self.position += 1
            found.append(self.segment(top))
        return found

    def segment(self, top: bool) -> Segment:
        if self.text.startswith("**", self.position):
            self.position += 2
            return "**"
        if self.peek("*"):
            self.position += 1
            return "*"
        if self.peek("{"):
            if not top:
                raise TemplateError(f"{self.text!r}: variables cannot nest")
            self.position += 1
            path = [self.ident()]
            while self.peek("."):
                self.position += 1
                path.append(self.ident())
            inner: tuple[str, ...] = ("*",)
            if self.peek("="):
                self.position += 1
                inner = tuple(str(s) for s in self.segments(top=False))
            self.expect("}")
            return Variable(tuple(path), inner)
        return self.literal()

    def ident(self) -> str:
        return self._take(_IDENT, "a field name")


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of an RPC: the rule itself or one of its additional bindings."""

    method: descriptor.MethodDescriptor
    http_method: str
    """Upper case: GET, POST, …"""
    template: PathTemplate
    body: str
    """``""`` (no body), ``"*"`` (every field the path does not set) or one field's name."""
    response_body: str
    """``""`` (the whole reply) or the field of the reply that is the body."""

    @property
    def rpc(self) -> str:
        """The gRPC method path, ``/package.Service/Method``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def path_fields(self) -> list[list[descriptor.FieldDescriptor]]:
        """For each variable of the template, the request fields along its path."""
        return [
            field_path(self.method.input_type, variable.field_path) for variable in self.template.variables
        ]

    def body_field(self) -> descriptor.FieldDescriptor | None:
        """The request field the body holds (None for no body or ``*``)."""
        if self.body in ("", "*"):
            return None
        return field_path(self.method.input_type, (self.body,))[0]

    def response_field(self) -> descriptor.FieldDescriptor | None:
        if not self.response_body:
            return None
        return field_path(self.method.output_type, (self.response_body,))[0]


def field_path(message: descriptor.Descriptor, path: tuple[str, ...]) -> list[descriptor.FieldDescriptor]:
    """The fields named by ``path`` (proto field names) from ``message`` down; TemplateError when
    one does not exist, or a field along the way is repeated or not a message."""
    fields = []
    current: descriptor.Descriptor | None = message
    for index, name in enumerate(path):
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            raise TemplateError(f"{message.full_name} has no field {'.'.join(path[: index + 1])}")
        if index < len(path) - 1 and (
            field.type != descriptor.FieldDescriptor.TYPE_MESSAGE or field.is_repeated
        ):
            raise TemplateError(
                f"{message.full_name}.{'.'.join(path[: index + 1])} is not a singular message"
            )
        fields.append(field)
        current = field.message_type
    return fields


def _rule_binding(method: descriptor.MethodDescriptor, rule: http_pb2.HttpRule) -> Binding | None:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return None
    if method.client_streaming or method.server_streaming:
        raise TemplateError(f"{method.full_name} streams; only unary RPCs have HTTP bindings")
    if pattern == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    binding = Binding(method, http_method, PathTemplate.parse(path), rule.body, rule.response_body)
    binding.path_fields()  # every variable names a field
    binding.body_field()
    binding.response_field()
    return binding


def bindings(method: descriptor.MethodDescriptor) -> Iterator[Binding]:
    """The HTTP bindings of an RPC, from its ``google.api.http`` option (none without one)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    for each in (rule, *rule.additional_bindings):
        binding = _rule_binding(method, each)
        if binding is not None:
            yield binding


def service_bindings(service: descriptor.ServiceDescriptor) -> list[Binding]:
    """Every HTTP binding of a service's RPCs, in the order of the proto."""
    return [binding for method in service.methods for binding in bindings(method)]
