// Eventline over HTTP/JSON from Node.js, with nothing but the built-in fetch (Node 18+).
//
//   node client.mjs [BASE_URL]        (default http://127.0.0.1:8080, or EVENTLINE_URL)
//
// EVENTLINE_API_KEY is sent as "Authorization: Bearer ..." when set; EVENTLINE_CUSTOMER
// names the customer (default "http-1"). The last line printed is a JSON summary.
//
// What an integration needs, shown once each: a customer upserted, an event tracked with
// a typed context (a 64-bit integer as a string, so it stays exact past 2^53), a batch with
// one bad event and each item's outcome, a refused call's google.rpc.Status with the
// paths of the bad fields, and the customer's timeline read page by page. Every event has
// an id of its own choosing, so a retry (of a 503, a timeout, a dropped connection) can
// never store it twice: running this program again stores nothing new.

const base = (process.argv[2] || process.env.EVENTLINE_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const customer = process.env.EVENTLINE_CUSTOMER || "http-1";
const key = process.env.EVENTLINE_API_KEY;

/** A refused call: the HTTP status and the google.rpc.Status the gateway answered with. */
class EventlineError extends Error {
  constructor(httpStatus, status) {
    super(`HTTP ${httpStatus}: ${status.message}`);
    this.httpStatus = httpStatus;
    this.code = status.code; // the gRPC code: 3 INVALID_ARGUMENT, 5 NOT_FOUND, 16 UNAUTHENTICATED, ...
    this.status = status;
  }

  /** The paths of the offending fields, from the status's google.rpc.BadRequest. */
  get fields() {
    return fieldViolations(this.status).map((violation) => violation.field);
  }
}

function fieldViolations(status) {
  return (status.details || [])
    .filter((detail) => detail["@type"] === "type.googleapis.com/google.rpc.BadRequest")
    .flatMap((detail) => detail.fieldViolations || []);
}

const RETRIED = new Set([503, 504]); // UNAVAILABLE, DEADLINE_EXCEEDED: safe to repeat with the same ids

/** One JSON call, retried with backoff on 503/504 and on network errors. */
async function call(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      if (attempt >= 5) throw error;
      await sleep(100 * 2 ** attempt);
      continue;
    }
    const reply = await response.json();
    if (response.ok) return reply;
    if (RETRIED.has(response.status) && attempt < 5) {
      await sleep(100 * 2 ** attempt);
      continue;
    }
    throw new EventlineError(response.status, reply);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const path = (id) => encodeURIComponent(id); // ids may hold ':', '@', '+': encode them in paths

async function main() {
  // A profile: PATCH creates it or changes the fields named by updateMask.
  const upserted = await call("PATCH", `/v1/customers/${path(customer)}`, {
    email: "jane@example.com",
    emailConsent: "CONSENT_GRANTED",
    attributes: { plan: { stringValue: "pro" }, seats: { integerValue: "5" } },
  });

  // One event with a typed context. int64 values travel as strings in proto3 JSON:
  // 9007199254740993 (2^53 + 1) would be rounded as a JavaScript number.
  const signedUp = await call("POST", `/v1/customers/${path(customer)}/events`, {
    eventId: `${customer}-signed-up`,
    name: "signed_up",
    occurredAt: "2024-01-15T09:30:00.250Z",
    context: { referrer_id: { integerValue: "9007199254740993" }, source: { stringValue: "newsletter" } },
  });

  // A batch: each item gets its own result, in order; a bad one is refused alone.
  const batch = await call("POST", "/v1/events:batchTrack", {
    events: [
      {
        customerEvent: {
          eventId: `${customer}-order-1`,
          customerId: customer,
          name: "order_placed",
          occurredAt: "2024-01-16T10:00:00Z",
          context: { total: { decimalValue: "59.90" }, items: { integerValue: "3" } },
        },
      },
      { customerEvent: { eventId: `${customer}-bad`, customerId: customer, name: "order placed" } },
      {
        customerEvent: {
          eventId: `${customer}-shipped`,
          customerId: customer,
          name: "order_shipped",
          occurredAt: "2024-01-17T08:00:00Z",
        },
      },
    ],
  });
  const outcomes = batch.results.map((result) => (result.error ? "refused" : "stored"));
  const refusedFields = batch.results.flatMap((result) => (result.error ? fieldViolations(result.error) : []));
  for (const [index, outcome] of outcomes.entries()) console.log(`batch item ${index}: ${outcome}`);

  // A refused call: the google.rpc.Status names every bad field.
  let invalid = null;
  try {
    await call("POST", `/v1/customers/${path(customer)}/events`, {
      eventId: `${customer}-invalid`,
      name: "bad name",
      context: { "item-id": { stringValue: "x" } },
    });
  } catch (error) {
    if (!(error instanceof EventlineError)) throw error;
    invalid = { httpStatus: error.httpStatus, code: error.code, fields: error.fields };
    console.log(`refused as expected: ${error.message}`);
  }

  // The timeline, newest first, two events per page.
  const timeline = [];
  let pageToken = "";
  do {
    const page = await call(
      "GET",
      `/v1/customers/${path(customer)}/timeline?pageSize=2&pageToken=${encodeURIComponent(pageToken)}`,
    );
    timeline.push(...page.events.map((event) => event.name));
    pageToken = page.nextPageToken;
  } while (pageToken);

  console.log(
    JSON.stringify({
      customer_id: upserted.customer.customerId,
      created: upserted.created,
      tracked_deduplicated: signedUp.deduplicated,
      signed_up_at: signedUp.event.occurredAt,
      referrer_id: signedUp.event.context.referrer_id.integerValue,
      batch: outcomes,
      batch_refused_fields: refusedFields.map((violation) => violation.field),
      invalid,
      timeline,
    }),
  );
}

main().catch((error) => {
  console.error(error instanceof EventlineError ? `${error.message} (code ${error.code})` : error);
  process.exit(1);
});
