// Calling Eventline from Node.js with the typed client (clients/typescript): upsert a
// customer, track events (a Date and a 64-bit integer sent exactly), send a batch with one
// bad event and read each item's outcome, decode a refused call's field errors, and read
// the customer's timeline.
//
//   npm install && npm start [HOST:PORT]       (default EVENTLINE_TARGET or 127.0.0.1:50051)
//
// EVENTLINE_API_KEY, when set, is sent as `authorization: Bearer <key>`.
// EVENTLINE_TLS_CA (a CA certificate file), when set, turns TLS on.
// The last line printed is a JSON summary.

import { readFileSync } from "node:fs";
import { EventlineClient, EventlineError, decimal, fromContext, fromTimestamp } from "@eventline/client";

const target = process.argv[2] ?? process.env.EVENTLINE_TARGET ?? "127.0.0.1:50051";
const caFile = process.env.EVENTLINE_TLS_CA;
const eventline = new EventlineClient({
  target,
  apiKey: process.env.EVENTLINE_API_KEY,
  tls: caFile ? { ca: readFileSync(caFile) } : undefined,
});

const customerId = process.env.EVENTLINE_CUSTOMER ?? `node-${Math.random().toString(36).slice(2, 10)}`;
const customer = await eventline.upsertCustomer(customerId, {
  email: `${customerId}@example.com`,
  attributes: { plan: "pro", seats: 5n },
  emailConsent: true,
});

// occurredAt takes a Date (or a Timestamp); int64 context values are bigint, so an id past
// 2^53 arrives exactly. Our own event ids make running this again change nothing.
const start = new Date(Date.UTC(2024, 0, 15, 9, 30, 0, 250));
const signedUp = await eventline.track(
  customerId,
  "signed_up",
  { source: "node-example", referrer_id: 9_007_199_254_740_993n },
  start,
  `${customerId}-signed-up`,
);

// A batch: one outcome per event, in order; the bad one is refused alone, with its field path.
const outcomes = await eventline.trackMany([
  {
    customerId,
    name: "order_placed",
    context: { total: decimal("59.90"), items: 3n },
    occurredAt: new Date(start.getTime() + 1000),
    eventId: `${customerId}-order-1`,
  },
  { customerId, name: "order-shipped", eventId: `${customerId}-order-1-shipped` },
  {
    customerId,
    name: "order_shipped",
    context: { express: true },
    occurredAt: new Date(start.getTime() + 2000),
    eventId: `${customerId}-order-1-shipped-2`,
  },
]);
const refused: Record<string, string> = {};
for (const outcome of outcomes) {
  if (outcome.ok) {
    console.log(`stored ${outcome.eventId}${outcome.deduplicated ? " (seen before)" : ""}`);
  } else {
    console.log(`refused ${outcome.eventId}: ${outcome.error.message}`);
    Object.assign(refused, outcome.error.fields);
  }
}

// A refused call throws an EventlineError: its code and the field paths of the BadRequest.
let invalid: { code: string; fields: Record<string, string> } | undefined;
try {
  await eventline.track(customerId, "page viewed", { "item-id": "A-1" });
} catch (error) {
  if (!(error instanceof EventlineError)) throw error;
  invalid = { code: error.codeName, fields: error.fields };
  console.log(`track refused: ${error.message}`);
}

const timeline = [];
for await (const event of eventline.timeline(customerId, { pageSize: 10 })) {
  const when = fromTimestamp(event.occurredAt!).toISOString();
  console.log(`${when}  ${event.name.padEnd(14)} ${event.eventId}`);
  timeline.push({ name: event.name, occurred_at: when, context: fromContext(event.context) });
}

const signedUpContext = fromContext(signedUp.event.context);
console.log(
  JSON.stringify({
    customer_id: customer.customerId,
    tracked_deduplicated: signedUp.deduplicated,
    signed_up_at: fromTimestamp(signedUp.event.occurredAt!).toISOString(),
    referrer_id: String(signedUpContext.referrer_id),
    batch: outcomes.map((outcome) => (outcome.ok ? "stored" : "refused")),
    batch_refused_fields: refused,
    invalid,
    timeline: timeline.map((event) => event.name),
  }),
);
