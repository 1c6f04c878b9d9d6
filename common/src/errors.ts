/**
 * The error catalogue. Codes, HTTP statuses and CONNACK return codes live in
 * contracts/errors.json so that Python and Rust read the same list. ErrorCode is the
 * literal union of those codes (error-codes.ts, generated from the contract), so a code
 * that is not in the contract fails to compile.
 */
import { readContract } from './contracts.js';
import type { ErrorCode } from './error-codes.js';

export { errorCodes, type ErrorCode } from './error-codes.js';

export interface ErrorEntry {
  readonly status: number;
  readonly connack?: number;
  readonly message: string;
}

export const errorCatalogue: Readonly<Record<ErrorCode, ErrorEntry>> = Object.freeze(
  readContract<{ errors: Record<ErrorCode, ErrorEntry> }>('errors.json').errors,
);

export class FleetwireError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly connack: number | undefined;
  /** Seconds a client should wait before retrying; sent as Retry-After on HTTP. */
  readonly retryAfterS: number | undefined;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; retryAfterS?: number }) {
    // Also checked at run time: a code can arrive from outside the type system (a cast, a parsed value).
    const entry = errorCatalogue[code] as ErrorEntry | undefined;
    if (!entry) throw new Error(`unknown error code ${code}: add it to common/contracts/errors.json`);
    super(message ?? entry.message, options);
    this.name = 'FleetwireError';
    this.code = code;
    this.status = entry.status;
    this.connack = entry.connack;
    this.retryAfterS = options?.retryAfterS;
  }

  toJSON(): { error: { code: ErrorCode; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}
