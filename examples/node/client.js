#!/usr/bin/env node
// An Eventline client in Node.js, built from protos/ alone: it loads the .proto
// files at run time (no generated code), upserts a customer, sends events one by
// one and in a batch, and reads the customer's timeline.
//
//   npm install
//   node client.js [HOST:PORT]            (default EVENTLINE_TARGET or 127.0.0.1:50051)
//
// EVENTLINE_API_KEY, when set, is sent as `authorization: Bearer <key>`.
// EVENTLINE_TLS_CA (a CA certificate file), when set, turns TLS on.
// The last line printed is a JSON summary.

"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");

function loadIngestion() {
  const definition = protoLoader.loadSync("eventline/ingestion/v1/ingestion.proto", {
    includeDirs: [PROTOS, path.join(PROTOS, "third_party")],
    keepCase: true, // field names exactly as in the .proto files
    longs: String, // int64 values as strings, as in the proto3 JSON mapping
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).eventline.ingestion.v1;
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, metadata, { deadline }, (error, reply) => {
      if (error) {
        reject(new Error(`${method}: ${grpc.status[error.code]}: ${error.details}`));
      } else {
        resolve(reply);
      }
    });
  });
}

function timestamp(date) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

async function main() {
  const target = process.argv[2] || process.env.EVENTLINE_TARGET || "127.0.0.1:50051";
  const ingestion = loadIngestion();
  const credentials = process.env.EVENTLINE_TLS_CA
    ? grpc.credentials.createSsl(fs.readFileSync(process.env.EVENTLINE_TLS_CA))
    : grpc.credentials.createInsecure();
  const client = new ingestion.IngestionService(target, credentials);
  const metadata = new grpc.Metadata();
  if (process.env.EVENTLINE_API_KEY) {
    metadata.set("authorization", `Bearer ${process.env.EVENTLINE_API_KEY}`);
  }

  const customerId = process.env.EVENTLINE_CUSTOMER || `node-${crypto.randomUUID().slice(0, 8)}`;
  const upserted = await call(
    client,
    "UpsertCustomer",
    {
      customer: {
        customer_id: customerId,
        email: `${customerId}@example.com`,
        attributes: { plan: { string_value: "pro" }, seats: { integer_value: "5" } },
        email_consent: "CONSENT_GRANTED",
      },
    },
    metadata,
  );

  const start = Date.now() - 60 * 60 * 1000;
  const tracked = await call(
    client,
    "TrackCustomerEvent",
    {
      event_id: `${customerId}-signed-up`,
      customer_id: customerId,
      name: "signed_up",
      occurred_at: timestamp(new Date(start)),
      context: { source: { string_value: "node-example" } },
    },
    metadata,
  );

  const batch = await call(
    client,
    "TrackEvents",
    {
      events: [
        {
          customer_event: {
            event_id: `${customerId}-order-1`,
            customer_id: customerId,
            name: "order_placed",
            occurred_at: timestamp(new Date(start + 1000)),
            context: { total: { decimal_value: "59.90" }, items: { integer_value: "3" } },
          },
        },
        {
          customer_event: {
            event_id: `${customerId}-order-1-shipped`,
            customer_id: customerId,
            name: "order_shipped",
            occurred_at: timestamp(new Date(start + 2000)),
            context: { express: { boolean_value: true } },
          },
        },
      ],
    },
    metadata,
  );
  const refused = batch.results.filter((result) => result.result === "error");
  if (refused.length) {
    throw new Error(`TrackEvents refused ${refused.length} events: ${JSON.stringify(refused)}`);
  }

  const timeline = await call(client, "ListTimeline", { customer_id: customerId, page_size: 10 }, metadata);
  for (const event of timeline.events) {
    const when = new Date(Number(event.occurred_at.seconds) * 1000).toISOString();
    console.log(`${when}  ${event.name.padEnd(14)} ${event.event_id}`);
  }
  client.close();
  console.log(
    JSON.stringify({
      customer_id: customerId,
      created: upserted.created,
      tracked_deduplicated: tracked.deduplicated,
      batch_results: batch.results.length,
      timeline: timeline.events.map((event) => event.name),
    }),
  );
}

main().catch((error) => {
  console.error(error.message || error);
  process.exit(1);
});
