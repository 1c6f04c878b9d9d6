/**
 * The error catalogue. Codes, HTTP statuses and CONNACK return codes live in
 * contracts/errors.json so that Python and Rust read the same list.
 */
import { readContract } from './contracts.js';

export interface ErrorEntry {
  readonly status: number;
  readonly connack?: number;
  readonly message: string;
}

export const errorCatalogue: Readonly<Record<string, ErrorEntry>> = Object.freeze(
  readContract<{ errors: Record<string, ErrorEntry> }>('errors.json').errors,
);

export type ErrorCode = keyof typeof errorCatalogue & string;

export class FleetwireError extends Error {
  readonly code: string;
  readonly status: number;
  readonly connack: number | undefined;
  /** Seconds a client should wait before retrying; sent as Retry-After on HTTP. */
  readonly retryAfterS: number | undefined;

  constructor(code: string, message?: string, options?: { cause?: unknown; retryAfterS?: number }) {
    const entry = errorCatalogue[code];
    if (!entry) throw new Error(`unknown error code ${code}: add it to common/contracts/errors.json`);
    super(message ?? entry.message, options);
    this.name = 'FleetwireError';
    this.code = code;
    this.status = entry.status;
    this.connack = entry.connack;
    this.retryAfterS = options?.retryAfterS;
  }

  toJSON(): { error: { code: string; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}
