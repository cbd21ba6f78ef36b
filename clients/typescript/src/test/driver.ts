// Drives the client against a live suite for tests/e2e/test_typescript_client.py: one
// scenario per run, its findings as the last line of output (JSON; bigints as strings).
//
//   node dist/test/driver.js SCENARIO HOST:PORT [ARGS…]
//
// EVENTLINE_API_KEY, EVENTLINE_TLS_CA, EVENTLINE_TLS_CERT and EVENTLINE_TLS_KEY configure the client.

import { readFileSync } from "node:fs";
import { EventlineClient, EventlineError, fromContext, fromTimestamp, type CustomerEvent } from "../index.js";

const [scenario, target, ...args] = process.argv.slice(2);
const file = (name: string) => (process.env[name] ? readFileSync(process.env[name]!) : undefined);
const ca = file("EVENTLINE_TLS_CA");
const client = new EventlineClient({
  target,
  apiKey: process.env.EVENTLINE_API_KEY,
  tls: ca ? { ca, cert: file("EVENTLINE_TLS_CERT"), key: file("EVENTLINE_TLS_KEY") } : undefined,
  retry: { attempts: Number(process.env.EVENTLINE_ATTEMPTS ?? 20), maxBackoffMs: 1000 },
});

function report(findings: unknown): void {
  console.log(JSON.stringify(findings, (_, value) => (typeof value === "bigint" ? value.toString() : value)));
}

async function roundtrip(): Promise<unknown> {
  // Milliseconds that a float of seconds would round, and integers a number cannot hold.
  const first = new Date(Date.UTC(2023, 6, 4, 10, 11, 12, 999));
  const second = new Date(Date.UTC(1999, 11, 31, 23, 59, 59, 1));
  const tracked = await client.track(
    "ts-1",
    "measured",
    { big: 9_007_199_254_740_993n, max: 2n ** 63n - 1n, min: -(2n ** 63n), at: second },
    first,
    "ts-roundtrip-1",
  );
  const [batched] = await client.trackMany([
    { customerId: "ts-1", name: "measured", occurredAt: second, context: { big: 2n ** 62n + 1n }, eventId: "ts-roundtrip-2" },
  ]);
  const timeline = [];
  for await (const event of client.timeline("ts-1")) {
    timeline.push({
      event_id: event.eventId,
      occurred_at: fromTimestamp(event.occurredAt!).toISOString(),
      context: fromContext(event.context),
    });
  }
  return {
    tracked_occurred_at: fromTimestamp(tracked.event.occurredAt!).toISOString(),
    batched_ok: batched?.ok,
    timeline,
  };
}

async function many(count: number): Promise<unknown> {
  const events: CustomerEvent[] = Array.from({ length: count }, (_, i) => ({
    customerId: `c${i % 500}`,
    name: "page_viewed",
    context: { seq: BigInt(i) },
  }));
  const outcomes = await client.trackMany(events);
  return {
    count: outcomes.length,
    ok: outcomes.every((outcome) => outcome.ok),
    ordered: outcomes.every((outcome, i) => outcome.ok && outcome.event.context.seq?.kind.value === BigInt(i)),
    ids: outcomes.map((outcome) => outcome.eventId),
  };
}

async function invalid(): Promise<unknown> {
  let call;
  try {
    await client.track("ts-1", "page viewed", { "item-id": "A-1" });
  } catch (error) {
    if (!(error instanceof EventlineError)) throw error;
    call = { code: error.codeName, fields: error.fields, retryable: error.retryable };
  }
  const outcomes = await client.trackMany([
    { customerId: "ts-1", name: "ok_event", eventId: "good-1" },
    { customerId: "ts-1", name: "bad name", eventId: "bad-1" },
    { system: true, name: "ok_system", context: { "bad-code": true }, eventId: "bad-2" },
  ]);
  return {
    call,
    batch: outcomes.map((outcome) =>
      outcome.ok ? { ok: true } : { ok: false, code: outcome.error.codeName, fields: outcome.error.fields },
    ),
  };
}

async function track(): Promise<unknown> {
  const tracked = await client.track("ts-1", "viewed", {}, undefined, args[0]);
  return { event_id: tracked.event.eventId };
}

const scenarios: Record<string, () => Promise<unknown>> = {
  roundtrip,
  many: () => many(Number(args[0])),
  invalid,
  track,
};

try {
  report(await scenarios[scenario!]!());
} catch (error) {
  const failure = EventlineError.fromCall(error);
  report({ error: failure.codeName, message: failure.message });
  process.exitCode = 2;
}
