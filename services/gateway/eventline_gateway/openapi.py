"""The OpenAPI 3.0 document of the HTTP/JSON API, generated from the protos.

``scripts/gen_protos.py`` compiles ``protos/`` into a descriptor set with the comments
(``--include_source_info``) and calls ``document`` with it; the result is checked in as
``openapi.json`` beside this module, served at ``/openapi.json``, and CI regenerates it
and fails when it differs (``gen_protos.py --check``). Paths come from the same reading of
the ``google.api.http`` annotations as the gateway's routes (``routes``), schemas from the
messages, and every description from the proto comments, so the document says what the
gateway does. The gateway's own HTTP routes, which are no RPC (provider status callbacks
and one-click unsubscribe), are described here (``gateway_paths``), from the same lists the
gateway serves them from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from eventline_gateway.callbacks import PROVIDERS
from eventline_gateway.codec import SCALAR_JSON
from eventline_gateway.errors import HTTP_STATUS
from eventline_gateway.routes import Binding, service_bindings

_FD = descriptor.FieldDescriptor
_STATUS = "google.rpc.Status"
_INTEGERS = {
    _FD.TYPE_INT32: ("integer", "int32"),
    _FD.TYPE_SINT32: ("integer", "int32"),
    _FD.TYPE_SFIXED32: ("integer", "int32"),
    _FD.TYPE_UINT32: ("integer", "int64"),
    _FD.TYPE_FIXED32: ("integer", "int64"),
    _FD.TYPE_INT64: ("string", "int64"),
    _FD.TYPE_SINT64: ("string", "int64"),
    _FD.TYPE_SFIXED64: ("string", "int64"),
    _FD.TYPE_UINT64: ("string", "uint64"),
    _FD.TYPE_FIXED64: ("string", "uint64"),
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time", "example": "2024-01-15T09:30:00Z"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "description": "Seconds with up to nine fractional digits and the suffix `s`, for example `3600s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Field paths in lowerCamelCase, separated by commas, for example `email,attributes`.",
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string", "description": "The type of the message, as a URL."}},
        "required": ["@type"],
        "additionalProperties": True,
        "description": "A message of any type, named by `@type`; its fields beside it.",
    },
}
_WRAPPED = {
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}

INTRODUCTION = """\
Eventline's HTTP/JSON API: the gRPC API transcoded by the gateway, generated from the protos \
(their `google.api.http` annotations and comments). Every operation is one RPC, served by the \
same service and with the same rules; the proto comments below are its documentation.

**JSON.** Bodies and replies are proto3 JSON: field names in lowerCamelCase (the protos' \
snake_case names are accepted too), 64-bit integers as strings (numbers are accepted), enums \
by name, timestamps in RFC 3339 (`2024-01-15T09:30:00Z`), durations as `"3600s"`. A reply \
carries every field that has no presence of its own (an empty string, `0`, `false`, `[]`) and \
the others when they are set. Unknown fields are refused.

**Requests.** Path parameters set the fields they name. A body of `*` is the request message \
itself; otherwise the body is the one field named, and the other fields may be query \
parameters (JSON or proto name, `a.b` for a nested field, repeated by repeating the parameter).

**Keys.** `Authorization: Bearer <key>` is passed to the service, which checks the key and its \
scope (`ingest`, `read`, `admin`) as for any gRPC call: 401 without a valid key, 403 without \
the scope.

**Errors.** Every error is a `google.rpc.Status` in JSON: `code` (the gRPC code), `message` and \
`details` (a `google.rpc.BadRequest` naming each bad field by its path). The HTTP status is the \
one AIP-193 gives the code: """


def _status_table() -> str:
    from google.rpc import code_pb2

    names = {number: name for name, number in code_pb2.Code.items()}
    return ", ".join(f"{names[code]} {status}" for code, status in HTTP_STATUS.items()) + (
        ". An unknown path is 404, another method on a known path 405, a body over the limit 413."
    )


def comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Full name (of a service, method, message, field, enum or enum value) → its leading comment."""
    found: dict[str, str] = {}
    for file in files:
        found.update(_file_comments(file))
    return found


def _file_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    located = {tuple(location.path): location.leading_comments for location in file.source_code_info.location}
    prefix = f"{file.package}." if file.package else ""
    found: dict[str, str] = {}

    def note(name: str, path: tuple[int, ...]) -> None:
        text = located.get(path, "").strip("\n")
        if text.strip():
            lines = (line[1:] if line.startswith(" ") else line for line in text.split("\n"))
            found[name] = "\n".join(lines).strip()

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]) -> None:
        note(name, path)
        for index, value in enumerate(enum.value):
            note(f"{name}.{value.name}", (*path, 2, index))

    def walk_message(message: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]) -> None:
        note(name, path)
        for index, field in enumerate(message.field):
            note(f"{name}.{field.name}", (*path, 2, index))
        for index, nested in enumerate(message.nested_type):
            walk_message(nested, f"{name}.{nested.name}", (*path, 3, index))
        for index, enum in enumerate(message.enum_type):
            walk_enum(enum, f"{name}.{enum.name}", (*path, 4, index))

    # Paths of descriptor.proto: 4 message_type, 5 enum_type, 6 service (2 its methods).
    for index, message in enumerate(file.message_type):
        walk_message(message, prefix + message.name, (4, index))
    for index, enum in enumerate(file.enum_type):
        walk_enum(enum, prefix + enum.name, (5, index))
    for index, service in enumerate(file.service):
        note(prefix + service.name, (6, index))
        for method_index, method in enumerate(service.method):
            note(f"{prefix}{service.name}.{method.name}", (6, index, 2, method_index))
    return found


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    found = re.match(r"(.+?\.)(\s|$)", flat)
    return found.group(1) if found else flat


class _Builder:
    def __init__(self, notes: dict[str, str]) -> None:
        self.notes = notes
        self.schemas: dict[str, Any] = {}

    def ref(self, message_type: descriptor.Descriptor) -> dict[str, Any]:
        name = message_type.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in _WRAPPED:
            return {**_WRAPPED[name], "nullable": True}
        if name not in self.schemas:
            self.schemas[name] = {}  # claimed first: recursive types refer to themselves
            self.schemas[name] = self.message_schema(message_type)
        return {"$ref": f"#/components/schemas/{name}"}

    def message_schema(
        self, message_type: descriptor.Descriptor, without: Iterable[str] = ()
    ) -> dict[str, Any]:
        skipped = set(without)
        properties = {
            field.json_name: self.field_schema(field)
            for field in message_type.fields
            if field.name not in skipped
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        text = self.notes.get(message_type.full_name, "")
        oneofs = [
            oneof
            for oneof in message_type.oneofs
            if not (len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name.startswith("_"))
        ]
        for oneof in oneofs:
            members = [f"`{field.json_name}`" for field in oneof.fields if field.name not in skipped]
            if len(members) > 1:
                text += f"\n\nAt most one of {', '.join(members)} (oneof `{oneof.name}`)."
        if text.strip():
            schema["description"] = text.strip()
        return schema

    def field_schema(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        schema = self.value_schema(field)
        if (
            field.type == _FD.TYPE_MESSAGE
            and field.message_type is not None
            and field.message_type.GetOptions().map_entry
        ):
            schema = {
                "type": "object",
                "additionalProperties": self.value_schema(field.message_type.fields_by_name["value"]),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": schema}
        text = self.notes.get(field.full_name, "")
        if text:
            if "$ref" in schema:
                schema = {"allOf": [schema]}  # OpenAPI 3.0 ignores siblings of $ref
            schema["description"] = text
        return schema

    def value_schema(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if kind == _FD.TYPE_MESSAGE:
            assert field.message_type is not None
            return self.ref(field.message_type)
        if kind == _FD.TYPE_ENUM:
            assert field.enum_type is not None
            enum = field.enum_type
            lines = []
            for value in enum.values:
                note = self.notes.get(f"{enum.full_name}.{value.name}", "")
                lines.append(f"`{value.name}`: {note}" if note else f"`{value.name}`")
            return {
                "type": "string",
                "enum": [value.name for value in enum.values],
                "x-enum-descriptions": lines,
            }
        if kind in _INTEGERS:
            json_type, json_format = _INTEGERS[kind]
            return {"type": json_type, "format": json_format}
        if kind == _FD.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if kind == _FD.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if kind == _FD.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _FD.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}

    def query_parameters(self, binding: Binding) -> list[dict[str, Any]]:
        """The fields a query may set: not bound by the path or the body, not in a oneof with
        a path field, and of a type a query parameter can hold (nested messages flattened)."""
        if binding.body == "*":
            return []
        path_names = {".".join(f.name for f in path) for path in binding.path_fields()}
        body = binding.body_field()
        oneofs = {
            path[-1].containing_oneof.full_name for path in binding.path_fields() if path[-1].containing_oneof
        }
        found = []
        for fields in _query_fields(binding.method.input_type, [], set()):
            proto = ".".join(f.name for f in fields)
            if any(proto == bound or proto.startswith(bound + ".") for bound in path_names):
                continue
            if body is not None and fields[0].name == body.name:
                continue
            if fields[-1].containing_oneof is not None and fields[-1].containing_oneof.full_name in oneofs:
                continue
            leaf = fields[-1]
            schema = self.value_schema(leaf)
            if leaf.is_repeated:
                schema = {"type": "array", "items": schema}
            parameter: dict[str, Any] = {
                "name": ".".join(f.json_name for f in fields),
                "in": "query",
                "required": False,
                "schema": schema,
            }
            if leaf.is_repeated:
                parameter.update(style="form", explode=True)
            text = self.notes.get(leaf.full_name, "")
            if text:
                parameter["description"] = text
            found.append(parameter)
        return found


def _query_fields(
    message_type: descriptor.Descriptor, above: list[descriptor.FieldDescriptor], seen: set[str]
) -> Iterator[list[descriptor.FieldDescriptor]]:
    for field in message_type.fields:
        if field.type == _FD.TYPE_MESSAGE:
            sub = field.message_type
            assert sub is not None
            if sub.GetOptions().map_entry:
                continue
            if sub.full_name in SCALAR_JSON:
                yield [*above, field]
            elif not field.is_repeated and sub.full_name not in seen:
                yield from _query_fields(sub, [*above, field], seen | {message_type.full_name})
            continue
        yield [*above, field]


def _operation(builder: _Builder, binding: Binding, index: int) -> dict[str, Any]:
    """The operation of one binding; ``index`` counts the bindings of its RPC (additional
    bindings get operation ids ending in 2, 3, … as protoc-gen-openapiv2 names them)."""
    method = binding.method
    service = method.containing_service
    text = builder.notes.get(method.full_name, "")
    operation: dict[str, Any] = {
        "tags": [service.name],
        "operationId": f"{service.name}_{method.name}" + (str(index + 1) if index else ""),
    }
    if text:
        operation["summary"] = _first_sentence(text)
        operation["description"] = f"{text}\n\ngRPC: `{service.full_name}/{method.name}`."
    parameters = []
    for variable, fields in zip(binding.template.variables, binding.path_fields(), strict=True):
        leaf = fields[-1]
        parameter: dict[str, Any] = {
            "name": variable.name,
            "in": "path",
            "required": True,
            "schema": builder.value_schema(leaf),
        }
        text = builder.notes.get(leaf.full_name, "")
        if text:
            parameter["description"] = f"{text} (`{'.'.join(f.json_name for f in fields)}` of the request)"
        parameters.append(parameter)
    parameters += builder.query_parameters(binding)
    if parameters:
        operation["parameters"] = parameters
    if binding.body:
        body = binding.body_field()
        if body is None:
            bound = {fields[0].name for fields in binding.path_fields() if len(fields) == 1}
            if bound:
                schema = builder.message_schema(method.input_type, without=bound)
                name = f"{method.full_name}Body"
                builder.schemas[name] = schema
                body_schema = {"$ref": f"#/components/schemas/{name}"}
            else:
                body_schema = builder.ref(method.input_type)
        else:
            body_schema = builder.field_schema(body)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    reply = binding.response_field()
    reply_schema = builder.field_schema(reply) if reply is not None else builder.ref(method.output_type)
    operation["responses"] = {
        "200": {"description": "The reply.", "content": {"application/json": {"schema": reply_schema}}},
        "default": {
            "description": "An error: a google.rpc.Status, with the HTTP status of its code.",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_STATUS}"}}},
        },
    }
    return operation


_COUNTS = "eventline.gateway.CallbackCounts"
_ERROR = {
    "description": "An error: a google.rpc.Status, with the HTTP status of its code.",
    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_STATUS}"}}},
}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_TOKEN = {
    "name": "token",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The signed token of the message's `List-Unsubscribe` URL: it names one customer and one "
    "channel and cannot be made or edited without the key.",
}


def gateway_paths() -> dict[str, Any]:
    """The gateway's own routes, which are no RPC: provider status callbacks and one-click
    unsubscribe (providers and mailbox providers call them, not API clients: no API key)."""
    callback = {
        "tags": ["Gateway"],
        "operationId": "Gateway_Callback",
        "summary": "Takes a provider's status callback and records its reports on the delivery ledger.",
        "description": "A provider's report of what happened to messages (delivered, bounced hard or soft, "
        "complained, opened, clicked), checked with that provider's own signature scheme and recorded with "
        "`CampaignService.RecordDeliveryEvents`. Each provider answers 404 until its secret is set. A request "
        "whose signature does not match, or whose timestamp is further than `EVENTLINE_CALLBACK_TOLERANCE_S` "
        "from now, is 401; the same request again (within 24 hours, on any replica) is 409 and records "
        "nothing. Bodies: `eventline` our JSON shape, `mailgun` Mailgun's webhook JSON, `twilio` Twilio's "
        "form-encoded status callback (`?deliveryId=` names the delivery), `sendgrid` SendGrid's Event "
        "Webhook JSON array (ECDSA-signed), `postmark` a Postmark webhook record (HTTP basic auth).",
        "security": [],
        "parameters": [
            {
                "name": "provider",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": list(PROVIDERS)},
                "description": "Whose callback this is: its payload shape and signature scheme.",
            },
            {
                "name": "deliveryId",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "Twilio only: the delivery the status callback URL was given for.",
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object", "additionalProperties": True}},
            },
        },
        "responses": {
            "200": {
                "description": "The reports were recorded (or said nothing of a delivery).",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_COUNTS}"}}},
            },
            "default": _ERROR,
        },
    }
    page = {
        "tags": ["Gateway"],
        "operationId": "Gateway_UnsubscribePage",
        "summary": "Shows the unsubscribe page of a message's List-Unsubscribe link.",
        "description": "A plain HTML page (no scripts) with a button that POSTs the one-click form; following "
        "the link (or a link scanner) unsubscribes nobody. 404 for a token that is forged or edited.",
        "security": [],
        "parameters": [_TOKEN],
        "responses": {"200": {"description": "The page.", "content": _HTML}, "default": _ERROR},
    }
    one_click = {
        "tags": ["Gateway"],
        "operationId": "Gateway_Unsubscribe",
        "summary": "One-click unsubscribe (RFC 8058): withdraws the consent the token names.",
        "description": "Withdraws the customer's consent for the token's channel at once and puts an "
        "`unsubscribed` event on their timeline (once, however often the POST comes). 404 for a token that "
        "is forged or edited.",
        "security": [],
        "parameters": [_TOKEN],
        "requestBody": {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}},
                    }
                }
            },
        },
        "responses": {"200": {"description": "Unsubscribed.", "content": _HTML}, "default": _ERROR},
    }
    return {
        "/v1/callbacks/{provider}": {"post": callback},
        "/v1/unsubscribe/{token}": {"get": page, "post": one_click},
    }


def _counts_schema() -> dict[str, Any]:
    count = {"type": "integer", "format": "int64"}
    return {
        "type": "object",
        "description": "What recording a callback's reports did.",
        "properties": {
            "recorded": {**count, "description": "Reports put on the ledger."},
            "unmatched": {**count, "description": "Reports that name no delivery Eventline knows."},
            "duplicates": {**count, "description": "Reports recorded before (the provider's retries)."},
        },
    }


def document(files: descriptor_pb2.FileDescriptorSet, package_prefix: str = "eventline.") -> dict[str, Any]:
    """The OpenAPI document of every annotated RPC of the services in ``files`` whose package
    starts with ``package_prefix``."""
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    builder = _Builder(comments(files.file))
    tags = []
    paths: dict[str, dict[str, Any]] = {}
    for file in files.file:
        if not file.package.startswith(package_prefix):
            continue
        for service_proto in file.service:
            service = pool.FindServiceByName(f"{file.package}.{service_proto.name}")
            bindings = service_bindings(service)
            if not bindings:
                continue
            tags.append({"name": service.name, "description": builder.notes.get(service.full_name, "")})
            counts: dict[str, int] = {}
            for binding in bindings:
                index = counts[binding.method.name] = counts.get(binding.method.name, -1) + 1
                path = paths.setdefault(binding.template.openapi_path(), {})
                path[binding.http_method.lower()] = _operation(builder, binding, index)
    builder.ref(pool.FindMessageTypeByName(_STATUS))
    builder.ref(pool.FindMessageTypeByName("google.rpc.BadRequest"))  # what Status details hold
    builder.schemas[_COUNTS] = _counts_schema()
    paths.update(gateway_paths())
    tags.append({"name": "Gateway", "description": "The gateway's own routes: provider status callbacks and "
                 "one-click unsubscribe. Providers call them with their own signatures, not an API key."})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Eventline HTTP/JSON API",
            "version": "v1",
            "description": INTRODUCTION + _status_table(),
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An Eventline API key (`eventline keys create`), sent as `Authorization: Bearer evl_…`. "
                    "Required when the services run with EVENTLINE_AUTH=true.",
                }
            },
        },
        "security": [{"apiKey": []}],
    }


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    """The document as the checked-in file holds it."""
    return json.dumps(document(files), indent=2, ensure_ascii=False) + "\n"
