"""HTTP/JSON to gRPC, driven by the protos' ``google.api.http`` annotations.

At start every annotated RPC of the services becomes a ``Route`` (see ``routes``); no
route is written by hand. A request is matched on its raw path, then its gRPC request is
built the way the HTTP/JSON mapping of ``google/api/http.proto`` says:

* the path's variables set the fields they name (``{customer.customer_id}``);
* the body is proto3 JSON: with ``body: "*"`` it is the request message itself (the
  path's fields excepted), with ``body: "customer"`` it is that field;
* with no body or a field body, every other field the request has may be given as a
  query parameter, by its proto or JSON name, nested fields as ``a.b``, repeated ones by
  repeating the parameter; messages with a JSON string form (Timestamp, Duration,
  FieldMask, wrappers) take that form. A parameter naming no such field is refused.

The call goes to the service over gRPC with the client's ``Authorization`` (the service
checks the key and its scope, as for any call), ``X-Request-Id`` and ``traceparent``, and
the reply comes back as proto3 JSON, or its error as a ``google.rpc.Status`` (``errors``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2
from multidict import MultiMapping

from eventline_gateway.codec import CODEC, SCALAR_JSON, JsonError, is_map, message_type_of
from eventline_gateway.errors import HttpError, invalid, status
from eventline_gateway.routes import Binding, Variable, decode

FieldPath = list[descriptor.FieldDescriptor]


_MESSAGE = descriptor.FieldDescriptor.TYPE_MESSAGE
_BOOL = descriptor.FieldDescriptor.TYPE_BOOL


def _proto_path(fields: FieldPath) -> str:
    return ".".join(f.name for f in fields)


def _query_value(fields: FieldPath, values: Sequence[str]) -> Any:
    """The JSON value of a query parameter (or path variable) for the field it names."""
    leaf = fields[-1]
    name = _proto_path(fields)
    if leaf.is_repeated and not is_map(leaf):
        return [_scalar(leaf, name, value) for value in values]
    if len(values) > 1:
        raise invalid(name, "given more than once; it is not a repeated field")
    return _scalar(leaf, name, values[0])


def _scalar(field: descriptor.FieldDescriptor, name: str, text: str) -> Any:
    is_bool = field.type == _BOOL or (
        field.type == _MESSAGE and message_type_of(field).full_name == "google.protobuf.BoolValue"
    )
    if is_bool:
        if text not in ("true", "false"):
            raise invalid(name, f"must be true or false, got {text[:40]!r}")
        return text == "true"
    return text


@dataclass
class Route:
    """One HTTP binding of an RPC, and the call that serves it."""

    binding: Binding
    backend: str
    """The service that serves it (``ingestion``, ``segmentation``, ``campaigns``)."""
    call: Any
    """The gRPC method on the backend's channel (a ``grpc.aio.UnaryUnaryMultiCallable``)."""
    pattern: re.Pattern[str] = field(init=False)
    request_class: type[Message] = field(init=False)
    variables: list[tuple[Variable, FieldPath]] = field(init=False)
    body_field: descriptor.FieldDescriptor | None = field(init=False)
    response_field: descriptor.FieldDescriptor | None = field(init=False)
    _query_fields: dict[str, FieldPath] = field(init=False, default_factory=dict)
    _bound: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pattern = self.binding.template.pattern()
        self.request_class = message_factory.GetMessageClass(self.binding.method.input_type)
        self.variables = list(zip(self.binding.template.variables, self.binding.path_fields(), strict=True))
        self.body_field = self.binding.body_field()
        self.response_field = self.binding.response_field()
        # Fields a query parameter may not set: those of the path (and the fields above them).
        self._bound = {_proto_path(path[: i + 1]) for _, path in self.variables for i in range(len(path))}
        if self.body_field is not None:
            self._bound.add(self.body_field.name)

    @property
    def template(self) -> str:
        return self.binding.template.text

    def request(self, match: re.Match[str], query: MultiMapping[str], body: bytes) -> Message:
        """The gRPC request of an HTTP request: body first, then path and query (which win)."""
        message = self.request_class()
        if self.binding.body:
            data = _load(body)
            if self.body_field is None:  # "*": the body is the request
                if data is not None:
                    if not isinstance(data, dict):
                        raise invalid("", "the body must be a JSON object")
                    _parse(data, message)
            elif data is not None:
                _parse({self.body_field.json_name: data}, message)
        tree: dict[str, Any] = {}
        for index, (variable, path) in enumerate(self.variables):
            try:
                value = decode(match.group(f"v{index}"), variable)
            except UnicodeDecodeError:
                raise invalid(variable.name, "the path holds bytes that are not UTF-8") from None
            _put(tree, path, _query_value(path, [value]))
        if query:
            if self.binding.body == "*":
                name = next(iter(query))
                raise invalid(name, "unknown query parameter: this method takes its fields in the body")
            # Each field once, whether named by its proto or its JSON name, with all its values.
            given: dict[str, tuple[FieldPath, list[str]]] = {}
            for name, value in query.items():
                path = self._query_field(name)
                given.setdefault(_proto_path(path), (path, []))[1].append(value)
            for path, values in given.values():
                _put(tree, path, _query_value(path, values))
        if tree:
            _parse(tree, message)
        return message

    def _query_field(self, name: str) -> FieldPath:
        """The request fields a query parameter names (by proto or JSON names, ``a.b`` nested)."""
        found = self._query_fields.get(name)
        if found is not None:
            return found
        fields: FieldPath = []
        message: descriptor.Descriptor | None = self.binding.method.input_type
        for part in name.split("."):
            current = None
            if message is not None and message.full_name not in SCALAR_JSON:
                current = message.fields_by_name.get(part) or message.fields_by_camelcase_name.get(part)
            if current is None:
                raise invalid(name, "unknown query parameter")
            fields.append(current)
            message = current.message_type if current.type == _MESSAGE and not current.is_repeated else None
        leaf = fields[-1]
        proto_path = _proto_path(fields)
        if any(proto_path == bound or proto_path.startswith(bound + ".") for bound in self._bound):
            raise invalid(name, "set by the path or the body, not by a query parameter")
        if is_map(leaf) or (leaf.type == _MESSAGE and message_type_of(leaf).full_name not in SCALAR_JSON):
            raise invalid(name, "a message or map cannot be a query parameter")
        self._query_fields[name] = fields
        return fields

    def reply(self, message: Message) -> Any:
        """The JSON body of a reply (its ``response_body`` field when the rule names one)."""
        if self.response_field is None:
            return CODEC.to_json(message)
        return CODEC.to_json(message).get(self.response_field.json_name)


def _load(body: bytes) -> Any:
    """The body's JSON value (RFC 8259: no NaN, valid UTF-8, at most 1,024 deep); None when empty."""
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid("", f"the body is not JSON: {exc}") from None


def _parse(data: Any, message: Message) -> None:
    try:
        CODEC.parse(data, message)
    except JsonError as exc:
        raise invalid(exc.field, exc.description) from None


def _put(tree: dict[str, Any], path: FieldPath, value: Any) -> None:
    for parent in path[:-1]:
        tree = tree.setdefault(parent.json_name, {})
    tree[path[-1].json_name] = value


@dataclass
class Transcoder:
    """Finds the route of an HTTP request and builds its gRPC request."""

    routes: list[Route]
    _by_method: dict[str, list[Route]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            key = (route.binding.http_method, route.binding.template.openapi_path())
            if key in seen:
                raise ValueError(
                    f"{key[0]} {key[1]} is bound twice: {seen[key].binding.rpc}, {route.binding.rpc}"
                )
            seen[key] = route
            self._by_method.setdefault(route.binding.http_method, []).append(route)
        # Templates with more literal text first, so that the most specific one matches.
        for candidates in self._by_method.values():
            candidates.sort(key=lambda r: -len(_literal_text(r.binding)))

    def match(self, http_method: str, raw_path: str) -> tuple[Route, re.Match[str]]:
        """The route of a request; 404 when no route has the path, 405 when others methods do."""
        for route in self._by_method.get(http_method, ()):
            found = route.pattern.fullmatch(raw_path)
            if found is not None:
                return route, found
        allowed = sorted(
            method
            for method, routes in self._by_method.items()
            if any(route.pattern.fullmatch(raw_path) for route in routes)
        )
        if allowed:
            raise HttpError(
                status(
                    code_pb2.UNIMPLEMENTED,
                    f"{http_method} is not allowed here; allowed: {', '.join(allowed)}",
                ),
                405,
                {"Allow": ", ".join(allowed)},
            )
        raise HttpError(status(code_pb2.NOT_FOUND, f"no such path: {raw_path[:200]}"), 404)

    @classmethod
    def for_services(
        cls,
        services: Mapping[str, descriptor.ServiceDescriptor],
        channels: Mapping[str, grpc.aio.Channel],
    ) -> Transcoder:
        """Routes for every annotated RPC of ``services`` (backend name → service), each
        calling through its backend's channel."""
        from eventline_gateway.routes import service_bindings

        routes = []
        for backend, service in services.items():
            for binding in service_bindings(service):
                response_class = message_factory.GetMessageClass(binding.method.output_type)
                call = channels[backend].unary_unary(
                    binding.rpc,
                    request_serializer=_serialize,
                    response_deserializer=response_class.FromString,
                )
                routes.append(Route(binding, backend, call))
        return cls(routes)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _literal_text(binding: Binding) -> str:
    template = binding.template
    return (
        "".join(s for s in template.segments if isinstance(s, str) and s not in ("*", "**")) + template.verb
    )
