/** Test harness: a real broker on a real port, real Redis, real keys, real WebSocket clients. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import mqtt, { type MqttClient, type IClientOptions } from 'mqtt';
import WebSocket from 'ws';
import mqttPacket from 'mqtt-packet';
import type { Job, JobType, Queue } from 'bullmq';
import {
  createLogger, createRedis, createTokenVerifier, generateSigningKey, loadOrCreateKeySet, saveDevice, signToken,
  type IngressEnvelope, type Redis, type SigningKey, type TokenRequest,
} from '@fleetwire/common';
import { buildBroker, brokerDefaults, type Broker, type BrokerConfig } from '@fleetwire/broker';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
export const REDIS_URL = process.env.REDIS_URL!;

export interface TestBroker {
  broker: Broker;
  port: number;
  url: string;
  httpUrl: string;
  signer: SigningKey;
  redis: Redis;
  logs: string[];
  mint(req: Partial<TokenRequest> & { sub: string }): Promise<string>;
  registerDevice(id: string): Promise<string>;
  close(): Promise<void>;
}

export interface StartOptions {
  tls?: { key: Buffer; cert: Buffer } | null;
  /** Token verification answers after this long, as a slow JWKS fetch would. */
  verifyDelayMs?: number;
}

export async function startBroker(overrides: Partial<BrokerConfig> = {}, { tls = null, verifyDelayMs = 0 }: StartOptions = {}): Promise<TestBroker> {
  const dataDir = await mkdtemp(join(tmpdir(), 'fw-test-'));
  const { signer, publicJwks } = await loadOrCreateKeySet(join(dataDir, 'keys'));
  const logs: string[] = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(String(chunk)); cb(); } });
  const log = createLogger({ level: 'debug', name: 'broker-test', destination });
  const config = brokerDefaults({ redisUrl: REDIS_URL, port: 0, host: '127.0.0.1', dataDir, ...overrides });
  const verifier = createTokenVerifier({ keys: publicJwks });
  if (verifyDelayMs > 0) {
    const verify = verifier.verify.bind(verifier);
    verifier.verify = async (token) => { await sleep(verifyDelayMs); return verify(token); };
  }
  const broker = await buildBroker(config, { verifier, log, tls });
  const { port } = await broker.listen();
  const redis = createRedis(REDIS_URL, { name: 'test' });
  const mint = (req: Partial<TokenRequest> & { sub: string }): Promise<string> =>
    signToken(signer, { typ: 'device', ttlSeconds: 600, ...req });
  return {
    broker, port, signer, redis, logs, mint,
    url: `ws://127.0.0.1:${port}/mqtt`,
    httpUrl: `http://127.0.0.1:${port}`,
    async registerDevice(id) {
      await saveDevice(redis, id);
      return mint({ sub: id });
    },
    async close() {
      await broker.close();
      redis.disconnect();
    },
  };
}

export { generateSigningKey };

/** mqtt.js over ws with the token in the subprotocol list, as a device would connect. */
export function connectOptions(token: string | null, clientId: string, extra: Partial<IClientOptions> = {}): IClientOptions {
  return {
    clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, keepalive: 30,
    createWebsocket: (url: string) => new WebSocket(url, token === null ? ['mqtt'] : ['mqtt', `auth.${token}`]),
    ...extra,
  };
}

const sockets = new WeakMap<MqttClient, WebSocket>();

export async function connect(url: string, token: string | null, clientId: string, extra: Partial<IClientOptions> = {}): Promise<MqttClient> {
  let socket: WebSocket | undefined;
  const opts = connectOptions(token, clientId, extra);
  const create = opts.createWebsocket!;
  opts.createWebsocket = (u, p, o) => (socket = create(u, p, o) as WebSocket);
  const client = await mqtt.connectAsync(url, opts);
  sockets.set(client, socket!);
  return client;
}

/** Resolves with the CONNACK return code of a refused connection (or 0 if it was accepted). */
export async function connackCode(url: string, token: string | null, clientId: string): Promise<number> {
  try {
    const c = await connect(url, token, clientId);
    await c.endAsync();
    return 0;
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}

/** Waits for the underlying WebSocket close and returns its code and reason. */
export function closeOf(client: MqttClient): Promise<{ code: number; reason: string }> {
  const ws = sockets.get(client)!;
  return new Promise((resolve) => {
    if (ws.readyState === ws.CLOSED) resolve({ code: -1, reason: 'already closed' });
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
}

export function nextMessage(client: MqttClient, topic: string, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { client.off('message', on); reject(new Error(`no message on ${topic} in ${timeoutMs} ms`)); }, timeoutMs);
    const on = (t: string, payload: Buffer): void => {
      if (t !== topic) return;
      clearTimeout(timer);
      client.off('message', on);
      resolve(payload);
    };
    client.on('message', on);
  });
}

/** The SUBACK return codes for `filters` (128 = refused), in order. */
export async function subackCodes(client: MqttClient, filters: string[], qos: 0 | 1 = 0): Promise<number[]> {
  try {
    const granted = await client.subscribeAsync(filters, { qos });
    return granted.map((g) => g.qos);
  } catch (err) {
    const packet = (err as { packet?: { granted?: number[] } }).packet;
    if (!packet?.granted) throw err;
    return packet.granted;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function waitFor<T>(fn: () => Promise<T> | T, ok: (v: T) => boolean, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`condition not met in ${timeoutMs} ms; last value ${JSON.stringify(v)}`);
    await sleep(50);
  }
}

/**
 * A raw MQTT 3.1.1 client over WebSocket (mqtt-packet, no client library), for
 * tests that must see exactly what the broker sends: flags such as DUP, every
 * PUBACK, the close frame.
 */
export interface RawMqtt {
  ws: WebSocket;
  /** Every packet received so far, in order. */
  packets: mqttPacket.Packet[];
  send(packet: Partial<mqttPacket.Packet> & { cmd: mqttPacket.PacketCmd }): void;
  /** Resolves with the first received packet (past or future) that matches. */
  next(match: (p: mqttPacket.Packet) => boolean, timeoutMs?: number): Promise<mqttPacket.Packet>;
  closed: Promise<{ code: number; reason: string }>;
}

export async function rawMqtt(url: string, token: string | null): Promise<RawMqtt> {
  const ws = new WebSocket(url, token === null ? ['mqtt'] : ['mqtt', `auth.${token}`]);
  ws.on('error', () => undefined);
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: mqttPacket.Packet[] = [];
  const waiters = new Set<() => void>();
  parser.on('packet', (p: mqttPacket.Packet) => {
    packets.push(p);
    for (const w of waiters) w();
  });
  ws.on('message', (data: Buffer) => parser.parse(data));
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('unexpected-response', () => reject(new Error('upgrade refused'))); });
  return {
    ws, packets, closed,
    send: (packet) => ws.send(mqttPacket.generate(packet as mqttPacket.Packet)),
    next(match, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const found = packets.find(match);
          if (!found) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(found);
        };
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no matching packet in ${timeoutMs} ms; got ${packets.map((p) => p.cmd).join(',')}`)); }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

/** CONNECT as a device would send it; resolves with the CONNACK. */
export async function rawConnect(c: RawMqtt, clientId: string, extra: Partial<mqttPacket.IConnectPacket> = {}): Promise<mqttPacket.IConnackPacket> {
  c.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30, ...extra });
  return (await c.next((p) => p.cmd === 'connack')) as mqttPacket.IConnackPacket;
}

/** A valid telemetry payload (contracts/schemas/telemetry.schema.json) whose reading `n` is `value`; `at` is its time. */
export function telemetry(value = 1, at = Date.now()): string {
  return JSON.stringify({ at, readings: [{ name: 'n', value, unit: '' }] });
}

/** A valid telemetry payload of about `bytes` bytes (at most about 2.4 KB: 32 readings). */
export function telemetryOfSize(bytes: number): string {
  const reading = (i: number) => ({ name: `r${String(i).padStart(31, '0')}`, value: i, unit: 'x'.repeat(16) });
  const readings = [reading(0)];
  while (JSON.stringify({ at: 0, readings }).length + 75 <= bytes && readings.length < 32) readings.push(reading(readings.length));
  return JSON.stringify({ at: Date.now(), readings });
}

/** The envelopes in a queue's jobs, whether a job holds one or a batch (contracts/queues.json `batch`). */
export async function queuedEnvelopes(queue: Queue, states: JobType[] = ['waiting']): Promise<Array<IngressEnvelope & { job: Job }>> {
  const jobs = await queue.getJobs(states);
  return jobs.flatMap((job) => {
    const data = job.data as IngressEnvelope | { batch: IngressEnvelope[] };
    return ('batch' in data ? data.batch : [data]).map((e) => ({ ...e, job }));
  });
}
