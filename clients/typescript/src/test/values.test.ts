// Values cross into the API without silent loss: Dates, int64, decimals, bad input refused.

import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { ValueSchema } from "../gen/eventline/common/v1/common_pb.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { ConnectError } from "@connectrpc/connect";
import { Code, EventlineError, decimal, fromValue, toTimestamp, toValue } from "../index.js";

test("a Date becomes a real Timestamp, to the millisecond, and comes back equal", () => {
  const when = new Date("2031-05-06T07:08:09.123Z");
  const timestamp = toTimestamp(when);
  assert.equal(timestamp.seconds, 1935817689n);
  assert.equal(timestamp.nanos, 123_000_000);
  const value = fromBinary(ValueSchema, toBinary(ValueSchema, toValue(when)));
  assert.deepEqual(fromValue(value), when);
});

test("an invalid Date is refused instead of becoming 1970-01-01", () => {
  assert.throws(() => toTimestamp(new Date("not a date")), TypeError);
});

test("int64 travels as bigint, past 2^53 exactly", () => {
  const big = 9_007_199_254_740_993n; // 2^53 + 1: a number cannot hold it
  const value = fromBinary(ValueSchema, toBinary(ValueSchema, toValue(big)));
  assert.equal(fromValue(value), big);
  assert.equal(fromValue(toValue(2n ** 63n - 1n)), 2n ** 63n - 1n);
  assert.throws(() => toValue(2n ** 63n), RangeError);
});

test("numbers: safe integers are int64, fractions decimals, unsafe integers refused", () => {
  assert.deepEqual(toValue(42).kind, { case: "integerValue", value: 42n });
  assert.deepEqual(toValue(0.1).kind, { case: "decimalValue", value: "0.1" });
  assert.throws(() => toValue(2 ** 53 + 2), RangeError);
  assert.throws(() => toValue(Number.NaN), RangeError);
  assert.deepEqual(toValue(decimal("59.90")).kind, { case: "decimalValue", value: "59.90" });
  assert.deepEqual(fromValue(toValue(decimal("59.90"))), decimal("59.90"));
});

test("a google.rpc.Status with a BadRequest becomes an error naming the fields", () => {
  const status = create(StatusSchema, {
    code: Code.InvalidArgument,
    message: "invalid request",
    details: [
      anyPack(
        BadRequestSchema,
        create(BadRequestSchema, { fieldViolations: [{ field: "name", description: "not a name" }] }),
      ),
    ],
  });
  const error = EventlineError.fromStatus(status);
  assert.equal(error.code, Code.InvalidArgument);
  assert.equal(error.codeName, "InvalidArgument");
  assert.deepEqual(error.fields, { name: "not a name" });
  assert.equal(error.retryable, false);
  assert.match(error.message, /name: not a name/);
  assert.equal(create(ValueSchema).kind.case, undefined);
});

test("a connection lost under a call is Unavailable and retried; the server's Aborted is not", () => {
  // As connect-node reports a reset socket (connectErrorFromNodeReason): Aborted, caused by Node's error.
  const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
  const lost = EventlineError.fromCall(new ConnectError(reset.message, Code.Aborted, undefined, undefined, reset));
  assert.equal(lost.code, Code.Unavailable);
  assert.equal(lost.retryable, true);
  assert.match(lost.message, /connection lost: read ECONNRESET/);
  const cancelled = EventlineError.fromCall(new ConnectError("stream reset", Code.Canceled));
  assert.equal(cancelled.code, Code.Unavailable);
  const answered = EventlineError.fromCall(new ConnectError("a conflict, retry later", Code.Aborted));
  assert.equal(answered.code, Code.Aborted);
  assert.equal(answered.retryable, false);
});
