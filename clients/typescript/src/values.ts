// JavaScript values to and from the API's typed values, without silent loss: a Date becomes
// a real Timestamp (never an empty one), int64 travels as bigint (never a rounded number).

import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ValueSchema, type Value } from "./gen/eventline/common/v1/common_pb.js";

/** A decimal number kept exactly as written, e.g. `decimal("59.90")`. */
export interface Decimal {
  readonly decimal: string;
}

/** What a context field (or customer attribute) may hold. */
export type ContextValue = string | boolean | bigint | number | Date | Decimal | Value;

/** The value of a context field as read back: decimals as `Decimal`, int64 as `bigint`. */
export type ReadValue = string | boolean | bigint | Date | Decimal | undefined;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** An exact decimal ("12.50", "-3e2"): sent as the text, so no digit is lost. */
export function decimal(text: string): Decimal {
  return { decimal: text };
}

/** A Timestamp of a valid Date (an invalid Date throws instead of becoming 1970-01-01). */
export function toTimestamp(value: Date | Timestamp): Timestamp {
  if (!(value instanceof Date)) {
    return value;
  }
  if (Number.isNaN(value.getTime())) {
    throw new TypeError("an invalid Date has no time to send");
  }
  return timestampFromDate(value);
}

/** The Date of a Timestamp (to the millisecond; Timestamp.nanos keeps finer digits). */
export function fromTimestamp(value: Timestamp): Date {
  return timestampDate(value);
}

function isValue(value: object): value is Value {
  return "$typeName" in value && (value as { $typeName: unknown }).$typeName === ValueSchema.typeName;
}

/**
 * The typed API value of a JavaScript value. A `number` must be a safe integer (it becomes
 * an int64) or have a fraction (it becomes a decimal); integers past 2^53 must be `bigint`,
 * since the number has already lost digits.
 */
export function toValue(value: ContextValue): Value {
  switch (typeof value) {
    case "string":
      return create(ValueSchema, { kind: { case: "stringValue", value } });
    case "boolean":
      return create(ValueSchema, { kind: { case: "booleanValue", value } });
    case "bigint":
      if (value < INT64_MIN || value > INT64_MAX) {
        throw new RangeError(`${value} does not fit a signed 64-bit integer (send a decimal)`);
      }
      return create(ValueSchema, { kind: { case: "integerValue", value } });
    case "number":
      if (!Number.isFinite(value)) {
        throw new RangeError(`${value} is not a number the API can hold`);
      }
      if (Number.isInteger(value)) {
        if (!Number.isSafeInteger(value)) {
          throw new RangeError(`${value} is past 2^53 and may already be rounded: pass a bigint`);
        }
        return create(ValueSchema, { kind: { case: "integerValue", value: BigInt(value) } });
      }
      return create(ValueSchema, { kind: { case: "decimalValue", value: String(value) } });
    case "object":
      if (value instanceof Date) {
        return create(ValueSchema, { kind: { case: "timestampValue", value: toTimestamp(value) } });
      }
      if (isValue(value)) {
        return value;
      }
      if (value !== null && typeof value.decimal === "string") {
        return create(ValueSchema, { kind: { case: "decimalValue", value: value.decimal } });
      }
  }
  throw new TypeError(`a context value is a string, boolean, bigint, number, Date or decimal(), not ${String(value)}`);
}

/** Typed API values of a context (or attributes) object. */
export function toContext(context: Record<string, ContextValue> | undefined): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const [code, value] of Object.entries(context ?? {})) {
    out[code] = toValue(value);
  }
  return out;
}

/** The JavaScript value of a typed API value. */
export function fromValue(value: Value): ReadValue {
  switch (value.kind.case) {
    case "timestampValue":
      return fromTimestamp(value.kind.value);
    case "decimalValue":
      return decimal(value.kind.value);
    case undefined:
      return undefined;
    default:
      return value.kind.value;
  }
}

/** A stored event's context as JavaScript values. */
export function fromContext(context: Record<string, Value>): Record<string, ReadValue> {
  const out: Record<string, ReadValue> = {};
  for (const [code, value] of Object.entries(context)) {
    out[code] = fromValue(value);
  }
  return out;
}
