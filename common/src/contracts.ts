/**
 * Typed access to common/contracts, the single source of truth for topics,
 * queues, JWT claims, close codes and payload schemas. The files are JSON so
 * Python and Rust read them too; this module adds types and helpers.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

/** Works from both src/ (tests) and dist/ (built), which sit at the same depth. */
export const contractsDir = fileURLToPath(new URL('../contracts/', import.meta.url));

export function readContract<T>(relativePath: string): T {
  return JSON.parse(readFileSync(join(contractsDir, relativePath), 'utf8')) as T;
}

export type Direction = 'device-to-cloud' | 'cloud-to-device' | 'broker-to-services' | 'service-to-services';

export interface TopicEntry {
  readonly class: string;
  readonly pattern: string;
  readonly direction: Direction;
  readonly qos: readonly number[];
  readonly schema: string;
  readonly queue?: string;
  readonly retained?: boolean;
  readonly encodings?: readonly string[];
}

interface TopicsFile { device_id_pattern: string; topics: TopicEntry[] }
/** A queue with `batch` carries jobs of up to max_messages envelopes, gathered by the producer for at most max_wait_ms. */
export interface QueueBatchSpec { readonly max_messages: number; readonly max_wait_ms: number }
export interface QueueSpec {
  readonly consumer: string; readonly attempts: number; readonly remove_on_complete: number; readonly remove_on_fail: number; readonly backoff_ms: number;
  readonly batch?: QueueBatchSpec;
}
interface QueuesFile { prefix: string; queues: Record<string, QueueSpec> }
interface JwtFile {
  alg: string[]; iss: string; aud: string; required_claims: string[]; types: string[]; user_roles: string[];
  optional_claims: Record<string, string>;
  subprotocol: string; token_subprotocol_prefix: string; clock_tolerance_s: number;
}
interface CloseCodesFile { codes: Record<string, { code: number; reason: string }> }

const topicsFile = readContract<TopicsFile>('topics.json');
export const topics: readonly TopicEntry[] = Object.freeze(topicsFile.topics);
export const deviceIdPattern = new RegExp(topicsFile.device_id_pattern);
export const queues = Object.freeze(readContract<QueuesFile>('queues.json'));
export const jwtContract = Object.freeze(readContract<JwtFile>('jwt.json'));
export const closeCodes = Object.freeze(readContract<CloseCodesFile>('close-codes.json').codes);
export type CloseReason = keyof typeof closeCodes;

export type TokenType = 'device' | 'user' | 'service';
export type UserRole = 'admin' | 'operator' | 'viewer';

/** Claims every Fleetwire token carries (contracts/jwt.json). */
export interface FleetwireClaims {
  iss: string;
  aud: string | string[];
  sub: string;
  typ: TokenType;
  exp: number;
  iat: number;
  jti: string;
  nbf?: number;
  role?: UserRole;
  /** User tokens: the session (refresh-token family) the token belongs to. */
  sid?: string;
  /** User and device tokens: the subject's token generation when signed (absent = 0). */
  gen?: number;
}

/** The concrete topic for a device, e.g. topicFor('cmd', 'dev-1') → 'devices/dev-1/cmd'. */
export function topicFor(topicClass: string, deviceId: string): string {
  const entry = topics.find((t) => t.class === topicClass);
  if (!entry) throw new Error(`unknown topic class ${topicClass}`);
  return entry.pattern.replace('{id}', deviceId);
}

export interface ParsedDeviceTopic {
  readonly deviceId: string;
  readonly entry: TopicEntry;
}

/**
 * Maps a concrete topic to its device id and topic class in O(levels) without
 * regular expressions: this runs for every publish on the broker's hot path.
 */
const bySuffix = new Map<string, TopicEntry>();
/** The fleet/ topics (presence, alerts): `fleet/<kind>/{id}`, keyed by `fleet/<kind>/`. */
const fleetTopics = new Map(topics.filter((t) => t.pattern.startsWith('fleet/')).map((t) => [t.pattern.slice(0, -'{id}'.length), t]));
for (const t of topics) {
  if (t.pattern.startsWith('devices/{id}/')) bySuffix.set(t.pattern.slice('devices/{id}/'.length), t);
}

export function parseDeviceTopic(topic: string): ParsedDeviceTopic | null {
  if (topic.startsWith('devices/')) {
    const slash = topic.indexOf('/', 8);
    if (slash < 0) return null;
    const entry = bySuffix.get(topic.slice(slash + 1));
    if (!entry) return null;
    return { deviceId: topic.slice(8, slash), entry };
  }
  if (topic.startsWith('fleet/')) {
    const slash = topic.indexOf('/', 6);
    const entry = slash < 0 ? undefined : fleetTopics.get(topic.slice(0, slash + 1));
    const id = topic.slice(slash + 1);
    return entry && !id.includes('/') ? { deviceId: id, entry } : null;
  }
  return null;
}

export function isDeviceId(id: string): boolean {
  return deviceIdPattern.test(id);
}
