// Eventline's TypeScript client. The generated messages are under "@eventline/client/gen/…"
// (for example "@eventline/client/gen/eventline/ingestion/v1/ingestion_pb").

export {
  EventlineClient,
  MAX_BATCH_BYTES,
  MAX_BATCH_EVENTS,
  MAX_MESSAGE_BYTES,
  TrackManyError,
  newEventId,
  type ClientOptions,
  type CustomerEvent,
  type Outcome,
  type Refused,
  type RetryPolicy,
  type SystemEvent,
  type TlsOptions,
  type Tracked,
} from "./client.js";
export { Code, EventlineError, violationsOf, type FieldViolation } from "./errors.js";
export {
  decimal,
  fromContext,
  fromTimestamp,
  fromValue,
  toContext,
  toTimestamp,
  toValue,
  type ContextValue,
  type Decimal,
  type ReadValue,
} from "./values.js";
export type { Customer, Event, Value } from "./gen/eventline/common/v1/common_pb.js";
export type { Timestamp } from "@bufbuild/protobuf/wkt";
