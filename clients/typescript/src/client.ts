// The Eventline client for Node.js: events in (one by one or in batches of any size),
// customers, timelines, over gRPC (Connect's gRPC transport on HTTP/2).
//
// Every write carries an event id, generated when not given, so that a retry can never
// store an event twice: calls failing with Unavailable or DeadlineExceeded are repeated,
// with the same ids, after an exponential backoff with jitter. Anything else throws an
// EventlineError at once.

import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Consent,
  CustomerSchema,
  type Customer,
  type Event,
} from "./gen/eventline/common/v1/common_pb.js";
import {
  IngestionService,
  TrackCustomerEventRequestSchema,
  TrackEventsItemSchema,
  TrackSystemEventRequestSchema,
  type EraseCustomerResponse,
  type TrackEventsItem,
} from "./gen/eventline/ingestion/v1/ingestion_pb.js";
import { Code, EventlineError, type FieldViolation } from "./errors.js";
import { toContext, toTimestamp, type ContextValue } from "./values.js";

/** The most events the server takes in one TrackEvents call (its default). */
export const MAX_BATCH_EVENTS = 1000;
/** The client's bound on one TrackEvents request: far below the 4 MiB a reply may take. */
export const MAX_BATCH_BYTES = 1024 * 1024;
/** The largest message an Eventline server sends or receives. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** Something one customer did. `eventId` is generated when not given. */
export interface CustomerEvent {
  customerId: string;
  name: string;
  context?: Record<string, ContextValue>;
  /** When it happened (a Date or a Timestamp); defaults to when the server receives it. */
  occurredAt?: Date | Timestamp;
  /** Give your own (an order number, say) to make repeats across restarts safe too. */
  eventId?: string;
}

/** Something that concerns every customer ("item X is back in stock"). */
export interface SystemEvent {
  system: true;
  name: string;
  context?: Record<string, ContextValue>;
  occurredAt?: Date | Timestamp;
  eventId?: string;
}

/** A stored event; `deduplicated` when its id had been seen before (also after a retry). */
export interface Tracked {
  ok: true;
  eventId: string;
  event: Event;
  deduplicated: boolean;
}

/** A refused batch event (nothing of it stored); field paths are relative to the event. */
export interface Refused {
  ok: false;
  eventId: string;
  error: EventlineError;
}

export type Outcome = Tracked | Refused;

/** Repeats of a call failing with Unavailable or DeadlineExceeded. */
export interface RetryPolicy {
  /** Attempts in all (1: no retries). */
  attempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

/** TLS to the server: its CA (absent: the system's roots), for mutual TLS a certificate and key (PEM). */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name the server's certificate is checked against, when not the target's host. */
  serverName?: string;
}

export interface ClientOptions {
  /** host:port of the ingestion service. */
  target?: string;
  /** Sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** TLS (true: with the system's roots). */
  tls?: TlsOptions | boolean;
  /** Deadline of each attempt of a call. */
  deadlineMs?: number;
  retry?: Partial<RetryPolicy>;
  maxBatchEvents?: number;
  maxBatchBytes?: number;
  /** Batches of trackMany in flight at once. */
  concurrency?: number;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 6, initialBackoffMs: 100, maxBackoffMs: 5000, multiplier: 2 };

/** A fresh event id (a random UUID, 32 hex digits). */
export function newEventId(): string {
  return randomUUID().replaceAll("-", "");
}

const ITEM_PREFIX = /^events\[\d+\]\.(?:customer_event|system_event)(?:\.|$)/;

/** `error` with field paths relative to the batch item they are about. */
function relativeToItem(error: EventlineError): EventlineError {
  const violations: FieldViolation[] = error.violations.map((v) => ({
    field: v.field.replace(ITEM_PREFIX, ""),
    description: v.description,
  }));
  return new EventlineError(error.code, error.rawMessage, violations);
}

/** A batch of trackMany failed for good; the other batches were still sent. */
export class TrackManyError extends EventlineError {
  override name = "TrackManyError";

  constructor(
    readonly failure: EventlineError,
    readonly events: readonly (CustomerEvent | SystemEvent)[],
    /** The id each event was sent with (generated ones included). */
    readonly eventIds: readonly string[],
    /** Each event's outcome, undefined where its batch got no answer. */
    readonly outcomes: readonly (Outcome | undefined)[],
  ) {
    super(failure.code, failure.rawMessage, failure.violations, { cause: failure });
  }

  /** The events without an outcome, with the ids they were sent with: safe to send again. */
  unsent(): (CustomerEvent | SystemEvent)[] {
    return this.events.flatMap((event, i) => (this.outcomes[i] ? [] : [{ ...event, eventId: this.eventIds[i] }]));
  }
}

function consent(value: boolean | undefined): Consent {
  return value === undefined ? Consent.UNSPECIFIED : value ? Consent.GRANTED : Consent.DENIED;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** An Eventline client; one per process, `close()` when done. */
export class EventlineClient {
  readonly ingestion: ConnectClient<typeof IngestionService>;
  readonly deadlineMs: number;
  readonly retry: RetryPolicy;
  readonly maxBatchEvents: number;
  readonly maxBatchBytes: number;
  readonly concurrency: number;
  private readonly headers: Record<string, string>;

  constructor(options: ClientOptions = {}) {
    const target = options.target ?? "127.0.0.1:50051";
    const tls = options.tls === true ? {} : options.tls || undefined;
    const transport = createGrpcTransport({
      baseUrl: `${tls ? "https" : "http"}://${target}`,
      nodeOptions: tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName } : {},
      readMaxBytes: MAX_MESSAGE_BYTES,
      writeMaxBytes: MAX_MESSAGE_BYTES,
    });
    this.ingestion = createClient(IngestionService, transport);
    this.deadlineMs = options.deadlineMs ?? 10_000;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.maxBatchEvents = options.maxBatchEvents ?? MAX_BATCH_EVENTS;
    this.maxBatchBytes = options.maxBatchBytes ?? MAX_BATCH_BYTES;
    this.concurrency = options.concurrency ?? 4;
    if (this.maxBatchEvents < 1 || this.maxBatchEvents > MAX_BATCH_EVENTS) {
      throw new RangeError(`maxBatchEvents is 1 to ${MAX_BATCH_EVENTS}`);
    }
    this.headers = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {};
  }

  /** Calls an RPC with the client's deadline, API key and retries. */
  async call<R>(rpc: (options: { timeoutMs: number; headers: Record<string, string> }) => Promise<R>): Promise<R> {
    for (let retry = 0; ; retry++) {
      try {
        return await rpc({ timeoutMs: this.deadlineMs, headers: this.headers });
      } catch (reason) {
        const error = EventlineError.fromCall(reason); // a lost connection: Unavailable
        if (!error.retryable || retry + 1 >= this.retry.attempts) {
          throw error;
        }
      }
      const cap = Math.min(this.retry.maxBackoffMs, this.retry.initialBackoffMs * this.retry.multiplier ** retry);
      await sleep(Math.random() * cap);
    }
  }

  /** Records that customer `customerId` did `name`; throws an EventlineError naming bad fields. */
  async track(
    customerId: string,
    name: string,
    context?: Record<string, ContextValue>,
    occurredAt?: Date | Timestamp,
    eventId?: string,
  ): Promise<Tracked> {
    const request = customerEventRequest({ customerId, name, context, occurredAt }, eventId ?? newEventId());
    const reply = await this.call((options) => this.ingestion.trackCustomerEvent(request, options));
    return { ok: true, eventId: request.eventId, event: reply.event!, deduplicated: reply.deduplicated };
  }

  /** Records a system event (one that concerns every customer). */
  async trackSystem(
    name: string,
    context?: Record<string, ContextValue>,
    occurredAt?: Date | Timestamp,
    eventId?: string,
  ): Promise<Tracked> {
    const request = systemEventRequest({ system: true, name, context, occurredAt }, eventId ?? newEventId());
    const reply = await this.call((options) => this.ingestion.trackSystemEvent(request, options));
    return { ok: true, eventId: request.eventId, event: reply.event!, deduplicated: reply.deduplicated };
  }

  /**
   * Records any number of events, in batches of at most `maxBatchEvents` events and
   * `maxBatchBytes` bytes, `concurrency` batches at a time. Returns one outcome per event in
   * input order; a batch failing for good throws a TrackManyError once the others are done.
   * `bulkImport`: the events are a history being loaded (an import, a backfill), not live
   * traffic; real-time segments may then catch up on them after the import, within the
   * operator's bound (`TrackEventsRequest.bulk_import`).
   */
  async trackMany(
    events: Iterable<CustomerEvent | SystemEvent>,
    options: { concurrency?: number; bulkImport?: boolean } = {},
  ): Promise<Outcome[]> {
    const bulkImport = options.bulkImport ?? false;
    const all = [...events];
    const eventIds = all.map((event) => event.eventId ?? newEventId());
    const items = all.map((event, i) => eventItem(event, eventIds[i]!));
    const outcomes: (Outcome | undefined)[] = new Array(items.length).fill(undefined);
    const pending = [...this.batches(items)];
    const failures: EventlineError[] = [];

    const send = async (start: number, batch: TrackEventsItem[]): Promise<void> => {
      let reply;
      try {
        reply = await this.call((callOptions) => this.ingestion.trackEvents({ events: batch, bulkImport }, callOptions));
      } catch (error) {
        if (error instanceof EventlineError && error.code === Code.ResourceExhausted && batch.length > 1) {
          // The server bounds requests by more than our limits: halve the batch until it fits.
          const half = Math.floor(batch.length / 2);
          await send(start, batch.slice(0, half));
          await send(start + half, batch.slice(half));
          return;
        }
        throw error;
      }
      reply.results.forEach((result, offset) => {
        const index = start + offset;
        if (result.result.case === "error") {
          const error = relativeToItem(EventlineError.fromStatus(result.result.value));
          outcomes[index] = { ok: false, eventId: eventIds[index]!, error };
        } else if (result.result.case === "event") {
          outcomes[index] = {
            ok: true,
            eventId: eventIds[index]!,
            event: result.result.value,
            deduplicated: result.deduplicated,
          };
        }
      });
    };

    const worker = async (): Promise<void> => {
      for (let next = pending.shift(); next && failures.length === 0; next = pending.shift()) {
        try {
          await send(next[0], next[1]);
        } catch (error) {
          failures.push(EventlineError.fromCall(error));
        }
      }
    };
    const workers = Math.min(options.concurrency ?? this.concurrency, pending.length);
    await Promise.all(Array.from({ length: workers }, worker));
    if (failures.length > 0) {
      throw new TrackManyError(failures[0]!, all, eventIds, outcomes);
    }
    const missing = outcomes.findIndex((outcome) => outcome === undefined);
    if (missing >= 0) {
      throw new EventlineError(Code.Internal, `the server sent no result for event ${missing}`);
    }
    return outcomes as Outcome[];
  }

  /** Consecutive runs of items within the count and byte limits, with their start. */
  private *batches(items: TrackEventsItem[]): Generator<[number, TrackEventsItem[]]> {
    let start = 0;
    let size = 0;
    for (let index = 0; index < items.length; index++) {
      const itemSize = fieldSize(toBinary(TrackEventsItemSchema, items[index]!).length);
      if (index > start && (index - start >= this.maxBatchEvents || size + itemSize > this.maxBatchBytes)) {
        yield [start, items.slice(start, index)];
        start = index;
        size = 0;
      }
      size += itemSize;
    }
    if (start < items.length) {
      yield [start, items.slice(start)];
    }
  }

  /** Creates a customer or changes the fields given (the others keep their values). */
  async upsertCustomer(
    customerId: string,
    fields: {
      email?: string;
      phone?: string;
      pushTokens?: string[];
      attributes?: Record<string, ContextValue>;
      emailConsent?: boolean;
      smsConsent?: boolean;
      pushConsent?: boolean;
    },
  ): Promise<Customer> {
    const paths = Object.entries({
      email: fields.email,
      phone: fields.phone,
      push_tokens: fields.pushTokens,
      attributes: fields.attributes,
      email_consent: fields.emailConsent,
      sms_consent: fields.smsConsent,
      push_consent: fields.pushConsent,
    }).flatMap(([path, value]) => (value === undefined ? [] : [path]));
    if (paths.length === 0) {
      throw new TypeError("give at least one field to set (events create unknown customers by themselves)");
    }
    const customer = create(CustomerSchema, {
      customerId,
      email: fields.email ?? "",
      phone: fields.phone ?? "",
      pushTokens: fields.pushTokens ?? [],
      attributes: toContext(fields.attributes),
      emailConsent: consent(fields.emailConsent),
      smsConsent: consent(fields.smsConsent),
      pushConsent: consent(fields.pushConsent),
    });
    const reply = await this.call((options) =>
      this.ingestion.upsertCustomer({ customer, updateMask: { paths } }, options),
    );
    return reply.customer!;
  }

  /** A customer's profile; an EventlineError with code NotFound when there is none. */
  async getCustomer(customerId: string): Promise<Customer> {
    const reply = await this.call((options) => this.ingestion.getCustomer({ customerId }, options));
    return reply.customer!;
  }

  /** A customer's events, newest first, read page by page as you iterate. */
  async *timeline(
    customerId: string,
    filter: { names?: string[]; occurredAfter?: Date; occurredBefore?: Date; pageSize?: number } = {},
  ): AsyncGenerator<Event> {
    let pageToken = "";
    do {
      const request = {
        customerId,
        pageSize: filter.pageSize ?? 200,
        pageToken,
        eventNames: filter.names ?? [],
        occurredAfter: filter.occurredAfter ? toTimestamp(filter.occurredAfter) : undefined,
        occurredBefore: filter.occurredBefore ? toTimestamp(filter.occurredBefore) : undefined,
      };
      const page = await this.call((options) => this.ingestion.listTimeline(request, options));
      yield* page.events;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Erases a customer's profile and events (an admin key when auth is on). */
  async eraseCustomer(customerId: string): Promise<EraseCustomerResponse> {
    return this.call((options) => this.ingestion.eraseCustomer({ customerId }, options));
  }
}

function customerEventRequest(event: CustomerEvent, eventId: string) {
  return create(TrackCustomerEventRequestSchema, {
    eventId,
    customerId: event.customerId,
    name: event.name,
    context: toContext(event.context),
    occurredAt: event.occurredAt === undefined ? undefined : toTimestamp(event.occurredAt),
  });
}

function systemEventRequest(event: SystemEvent, eventId: string) {
  return create(TrackSystemEventRequestSchema, {
    eventId,
    name: event.name,
    context: toContext(event.context),
    occurredAt: event.occurredAt === undefined ? undefined : toTimestamp(event.occurredAt),
  });
}

function eventItem(event: CustomerEvent | SystemEvent, eventId: string): TrackEventsItem {
  if ("system" in event && event.system) {
    return create(TrackEventsItemSchema, { event: { case: "systemEvent", value: systemEventRequest(event, eventId) } });
  }
  const customer = event as CustomerEvent;
  if (typeof customer.customerId !== "string") {
    throw new TypeError("a customer event needs a customerId (or mark a system event with system: true)");
  }
  return create(TrackEventsItemSchema, {
    event: { case: "customerEvent", value: customerEventRequest(customer, eventId) },
  });
}

/** Bytes of a length-delimited field of `length` bytes: tag, length varint, payload. */
function fieldSize(length: number): number {
  let varint = 1;
  for (let rest = length >>> 7; rest > 0; rest >>>= 7) {
    varint++;
  }
  return 1 + varint + length;
}
