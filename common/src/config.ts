/**
 * Config from the environment: one spec object per service, with defaults and
 * units in the names, validated at start-up and frozen. A bad value fails
 * start-up with every offending variable named together with the fix.
 */
import { readFile } from 'node:fs/promises';
import { FleetwireError } from './errors.js';

export interface Field<T> {
  /** Environment variable read for this field. */
  readonly env: string;
  readonly default: T;
  /** Turns the raw string into T, or throws an Error whose message says what is expected. */
  readonly parse: (raw: string) => T;
  readonly help: string;
}

export type Spec = Record<string, Field<unknown>>;
export type ConfigOf<S extends Spec> = { readonly [K in keyof S]: S[K] extends Field<infer T> ? T : never };

export function int(env: string, def: number, help: string, bounds: { min?: number; max?: number } = {}): Field<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = bounds;
  return {
    env, default: def, help,
    parse(raw) {
      const n = Number(raw.trim());
      if (!Number.isInteger(n) || n < min || n > max) {
        throw new Error(`expected a whole number from ${min} to ${max}`);
      }
      return n;
    },
  };
}

export function str(env: string, def: string, help: string, pattern?: RegExp): Field<string> {
  return {
    env, default: def, help,
    parse(raw) {
      if (pattern && !pattern.test(raw)) throw new Error(`expected a value matching ${pattern}`);
      return raw;
    },
  };
}

export function bool(env: string, def: boolean, help: string): Field<boolean> {
  return {
    env, default: def, help,
    parse(raw) {
      const v = raw.trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(v)) return true;
      if (['0', 'false', 'no', 'off'].includes(v)) return false;
      throw new Error('expected true or false');
    },
  };
}

export function oneOf<T extends string>(env: string, def: T, choices: readonly T[], help: string): Field<T> {
  return {
    env, default: def, help,
    parse(raw) {
      if (!(choices as readonly string[]).includes(raw)) throw new Error(`expected one of ${choices.join(', ')}`);
      return raw as T;
    },
  };
}

/** Comma-separated list; empty entries are dropped. */
export function list(env: string, def: readonly string[], help: string): Field<readonly string[]> {
  return {
    env, default: def, help,
    parse: (raw) => Object.freeze(raw.split(',').map((s) => s.trim()).filter(Boolean)),
  };
}

export function url(env: string, def: string, help: string, protocols: readonly string[]): Field<string> {
  return {
    env, default: def, help,
    parse(raw) {
      let u: URL;
      try {
        u = new URL(raw);
      } catch {
        throw new Error(`expected a URL such as ${protocols[0]}//host:port`);
      }
      if (!protocols.includes(u.protocol)) throw new Error(`expected a ${protocols.join(' or ')} URL`);
      return raw;
    },
  };
}

/** Reads every field of `spec` from `env`; throws one CONFIG_INVALID error naming each bad variable. */
export function loadConfig<S extends Spec>(spec: S, env: NodeJS.ProcessEnv = process.env): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, field] of Object.entries(spec)) {
    const raw = env[field.env];
    if (raw === undefined || raw === '') {
      out[key] = field.default;
      continue;
    }
    try {
      out[key] = field.parse(raw);
    } catch (err) {
      problems.push(`${field.env}=${JSON.stringify(raw)}: ${(err as Error).message} (${field.help})`);
    }
  }
  if (problems.length > 0) throw configInvalid(problems);
  return Object.freeze(out) as ConfigOf<S>;
}

/** Defaults as a plain object, for building a config in tests without touching the environment. */
export function defaults<S extends Spec>(spec: S, overrides: Partial<ConfigOf<S>> = {}): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(spec)) out[key] = field.default;
  return Object.freeze({ ...out, ...overrides }) as ConfigOf<S>;
}

/** Settings every service shares. */
export const baseSpec = {
  nodeEnv: str('NODE_ENV', 'development', 'development or production'),
  logLevel: oneOf('LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'pino log level'),
  redisUrl: url('REDIS_URL', 'redis://127.0.0.1:6379', 'Redis 7 connection URL', ['redis:', 'rediss:']),
  dataDir: str('FLEETWIRE_DATA_DIR', '.data', 'folder for local keys and the private Redis'),
  keyRetireAfterS: int('KEY_RETIRE_AFTER_S', 90_000, 'seconds a replaced signing key stays trusted after its successor starts signing; at least the longest token lifetime', { min: 60 }),
} satisfies Spec;

/** Settings of every process that serves HTTP. */
export const serverSpec = {
  host: str('HOST', '0.0.0.0', 'address the HTTP/WebSocket server binds'),
  port: int('PORT', 8080, 'HTTP + WebSocket port', { min: 0, max: 65535 }),
  tlsCertFile: str('TLS_CERT_FILE', '', 'PEM certificate; with TLS_KEY_FILE serves WSS/HTTPS'),
  tlsKeyFile: str('TLS_KEY_FILE', '', 'PEM private key for TLS_CERT_FILE'),
  trustedProxies: list('TRUSTED_PROXIES', [], 'comma-separated IPs or CIDRs whose X-Forwarded-For is believed'),
  publicUrl: url('FLEETWIRE_PUBLIC_URL', 'http://localhost:8080', 'URL users reach this deployment at (printed, and used in password-reset links)', ['http:', 'https:']),
  // Sockets that never finish a request hold a descriptor each; these bound how long (upgraded WebSockets are not affected).
  httpHeadersTimeoutMs: int('HTTP_HEADERS_TIMEOUT_MS', 10_000, 'a socket that has not sent a whole request head (request line and headers) this long after connecting or after its last request is answered 408 and closed; also bounds the TLS handshake', { min: 100 }),
  httpRequestTimeoutMs: int('HTTP_REQUEST_TIMEOUT_MS', 30_000, 'a request whose body has not fully arrived this long after it started is answered 408 and closed; at least HTTP_HEADERS_TIMEOUT_MS', { min: 100 }),
  httpKeepAliveTimeoutMs: int('HTTP_KEEPALIVE_TIMEOUT_MS', 72_000, 'an idle keep-alive socket is closed after this long (longer than the 60 s idle timeout of common load balancers)', { min: 100 }),
  httpConnectionsCheckIntervalMs: int('HTTP_CONNECTIONS_CHECK_INTERVAL_MS', 1000, 'how often sockets are checked against HTTP_HEADERS_TIMEOUT_MS and HTTP_REQUEST_TIMEOUT_MS', { min: 10 }),
  httpMaxSocketsPerIp: int('HTTP_MAX_SOCKETS_PER_IP', 1100, 'open sockets per remote address on one process, HTTP and WebSocket together, counted when the socket opens; more are closed at once. Peers in TRUSTED_PROXIES are exempt', { min: 1 }),
} satisfies Spec;

export type ServerConfig = ConfigOf<typeof serverSpec>;

/** Problems between server settings that each look fine alone (Node refuses a headers timeout above the request timeout). */
export function serverConfigProblems(c: Pick<ServerConfig, 'httpHeadersTimeoutMs' | 'httpRequestTimeoutMs'>): string[] {
  return c.httpHeadersTimeoutMs > c.httpRequestTimeoutMs
    ? [`HTTP_HEADERS_TIMEOUT_MS (${c.httpHeadersTimeoutMs}) must not exceed HTTP_REQUEST_TIMEOUT_MS (${c.httpRequestTimeoutMs}): lower the first or raise the second`]
    : [];
}

export function configInvalid(problems: string[]): FleetwireError {
  return new FleetwireError('CONFIG_INVALID', `Invalid configuration:\n  - ${problems.join('\n  - ')}`);
}

/** The TLS key pair when TLS_CERT_FILE and TLS_KEY_FILE are set, else null. */
export async function readTls(config: { tlsCertFile: string; tlsKeyFile: string }): Promise<{ key: Buffer; cert: Buffer } | null> {
  if (!config.tlsCertFile && !config.tlsKeyFile) return null;
  if (!config.tlsCertFile || !config.tlsKeyFile) {
    throw new FleetwireError('CONFIG_INVALID', 'Both TLS_CERT_FILE and TLS_KEY_FILE must be set together.');
  }
  return { cert: await readFile(config.tlsCertFile), key: await readFile(config.tlsKeyFile) };
}
