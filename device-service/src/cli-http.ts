/**
 * What the device service's CLI commands share (`devices command`, `rollouts …`): calls to
 * a running server's HTTP API with FLEETWIRE_URL and FLEETWIRE_TOKEN, progress bars, and a
 * live view that redraws in place on a terminal and writes a line per change otherwise.
 */

/** The server answered with an error: its status and `{"error": {"code", "message"}}`. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string | undefined, readonly detail: string | undefined) {
    super(code !== undefined ? `${code}: ${detail ?? ''}` : `HTTP ${status}`);
  }
}

/** A refusal of the command line itself (a missing or malformed flag): exit status 2, not 1. */
export class UsageError extends Error {}

export class Api {
  constructor(readonly base: string, private readonly token: string) {}

  /** FLEETWIRE_URL (default http://127.0.0.1:8080) and FLEETWIRE_TOKEN, which must be set. */
  static fromEnv(env: NodeJS.ProcessEnv, tokenHint: string): Api {
    const token = env.FLEETWIRE_TOKEN;
    if (!token) throw new UsageError(`set FLEETWIRE_TOKEN to ${tokenHint}`);
    return new Api(env.FLEETWIRE_URL || 'http://127.0.0.1:8080', token);
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(new URL(path, this.base), {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      const cause = (err as { cause?: unknown }).cause;
      throw new Error(`cannot reach ${this.base} (${cause instanceof Error ? cause.message : (err as Error).message}); is the server running, and FLEETWIRE_URL right?`);
    }
    const text = await res.text();
    let parsed: (T & { error?: { code?: string; message?: string } }) | undefined;
    try {
      parsed = text ? JSON.parse(text) as T & { error?: { code?: string; message?: string } } : undefined;
    } catch { /* not JSON (a proxy's error page): reported by its status below */ }
    if (!res.ok) throw new ApiError(res.status, parsed?.error?.code, parsed?.error?.message);
    if (parsed === undefined && text) throw new Error(`${method} ${path}: the server answered ${res.status} with a body that is not JSON`);
    return parsed ?? {} as T;
  }
}

export const BAR_WIDTH = 20;

/** `[#####---------------]`: `part` of `total`; full when the total is 0 (nothing left to do). */
export function bar(part: number, total: number, width = BAR_WIDTH): string {
  const filled = total === 0 ? width : Math.min(width, Math.max(0, Math.round((part / total) * width)));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/**
 * Progress as it changes. On a terminal the lines are drawn over the previous drawing
 * (cursor up, carriage return, erase line), the cursor left at the end of the last line;
 * otherwise (a log, a pipe) `logLine` is written, once per change.
 */
export class LiveView {
  private drawn = 0;
  private last = '';

  constructor(private readonly out: NodeJS.WriteStream = process.stdout) {}

  get isTTY(): boolean {
    return this.out.isTTY === true;
  }

  update(lines: readonly string[], logLine: string = lines.join(' ')): void {
    if (this.isTTY) {
      const drawing = lines.join('\n');
      if (drawing === this.last) return;
      const up = this.drawn > 1 ? `\x1b[${this.drawn - 1}A` : '';
      this.out.write(`${up}\r\x1b[2K${lines.join('\n\x1b[2K')}`);
      this.drawn = lines.length;
      this.last = drawing;
    } else if (logLine !== this.last) {
      this.out.write(`${logLine}\n`);
      this.last = logLine;
    }
  }

  /** Ends the drawing: what is written next starts on a line of its own. */
  end(): void {
    if (this.isTTY && this.drawn > 0) this.out.write('\n');
    this.drawn = 0;
  }
}

/**
 * Runs a command's body: a UsageError is printed (with the usage text) and gives exit
 * status 2; anything else propagates to the CLI, which prints it and exits 1.
 */
export async function withUsage(usage: string, run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (err) {
    const parseError = String((err as { code?: unknown }).code ?? '').startsWith('ERR_PARSE_ARGS'); // node:util parseArgs
    if (!(err instanceof UsageError) && !parseError) throw err;
    process.stderr.write(`fleetwire: ${(err as Error).message}\nusage: ${usage}\n`);
    return 2;
  }
}
