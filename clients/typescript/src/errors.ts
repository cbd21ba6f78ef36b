// Errors of the Eventline API with the server's details decoded: a failed call throws an
// EventlineError whose `violations` name each bad field by its path in the request.

import { Code, ConnectError } from "@connectrpc/connect";
import { anyUnpack, type Any } from "@bufbuild/protobuf/wkt";
import { BadRequestSchema, QuotaFailureSchema } from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export { Code };

/** One bad field of a request: its path (`context["item-id"]`) and what is wrong with it. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** Codes after which the same call, with the same event ids, may succeed. */
const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded]);

/** Node's codes for a connection lost under a call, which connect-node reports as Aborted
 * (`connectErrorFromNodeReason`): gRPC's Unavailable, not an answer of the server. */
const CONNECTION_LOST = new Set(["ECONNRESET", "ERR_HTTP2_INVALID_STREAM", "ERR_STREAM_DESTROYED"]);

/** Whether `reason` or an error it was caused by is one of Node's CONNECTION_LOST errors. */
function connectionLost(reason: unknown): boolean {
  let error = reason;
  for (let depth = 0; error instanceof Error && depth < 10; depth++) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_LOST.has(code)) {
      return true;
    }
    error = error.cause;
  }
  return false;
}

/** A failed call (or a refused batch item). `code` is the gRPC status code. */
export class EventlineError extends Error {
  override name = "EventlineError";

  constructor(
    readonly code: Code,
    readonly rawMessage: string,
    readonly violations: readonly FieldViolation[] = [],
    options?: { cause?: unknown },
  ) {
    const summary = violations.map((v) => `${v.field}: ${v.description}`).join("; ");
    const text = summary && !rawMessage.includes(summary) ? `${rawMessage} (${summary})` : rawMessage;
    super(`[${Code[code] ?? code}] ${text}`, options);
  }

  /** The name of the code, as in gRPC: "InvalidArgument", "Unavailable"… */
  get codeName(): string {
    return Code[this.code] ?? String(this.code);
  }

  /** Whether repeating the call may succeed (safe: event ids make it idempotent). */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  /** The violations as `{ field path: description }`. */
  get fields(): Record<string, string> {
    return Object.fromEntries(this.violations.map((v) => [v.field, v.description]));
  }

  /** The error of a failed call, its google.rpc details decoded. A connection lost under the
   * call is Unavailable (retryable), as gRPC has it: Node reports a stream reset by a lost
   * connection as Canceled, and connect-node a reset socket (ECONNRESET) as Aborted. */
  static fromCall(reason: unknown): EventlineError {
    if (reason instanceof EventlineError) {
      return reason;
    }
    const error = ConnectError.from(reason);
    if (error.code === Code.Canceled || (error.code === Code.Aborted && connectionLost(reason))) {
      return new EventlineError(Code.Unavailable, `connection lost: ${error.rawMessage}`, [], { cause: reason });
    }
    const violations = [
      ...error.findDetails(BadRequestSchema).flatMap((bad) =>
        bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
      ),
      ...error.findDetails(QuotaFailureSchema).flatMap((quota) =>
        quota.violations.map((v) => ({ field: v.subject, description: v.description })),
      ),
    ];
    return new EventlineError(error.code, error.rawMessage, violations, { cause: reason });
  }

  /** The error of a google.rpc.Status (a refused batch item's). */
  static fromStatus(status: Status): EventlineError {
    return new EventlineError(status.code as Code, status.message, violationsOf(status.details));
  }
}

/** The field violations of every BadRequest and QuotaFailure among `details`. */
export function violationsOf(details: readonly Any[]): FieldViolation[] {
  const found: FieldViolation[] = [];
  for (const detail of details) {
    const bad = anyUnpack(detail, BadRequestSchema);
    if (bad) {
      found.push(...bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    }
    const quota = anyUnpack(detail, QuotaFailureSchema);
    if (quota) {
      found.push(...quota.violations.map((v) => ({ field: v.subject, description: v.description })));
    }
  }
  return found;
}
