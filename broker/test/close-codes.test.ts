/**
 * Every way the broker ends a connection tells the client why: a 40xx close
 * code and a reason (docs/errors.md), and operators see the same reason as a
 * metric label. A client that simply closes is not counted as malformed input.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqttPacket from 'mqtt-packet';
import { connect, rawConnect, rawMqtt, sleep, startBroker, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
  t = await startBroker({ keepaliveMinS: 1, connectTimeoutMs: 500, connectAttemptsPerIp: 10_000 });
});
afterAll(async () => t.close());

const metrics = async (): Promise<string> => (await fetch(`${t.httpUrl}/metrics`)).text();
const connectBytes = (over: Partial<mqttPacket.IConnectPacket> = {}) =>
  mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-close', keepalive: 30, ...over });

describe('close codes', () => {
  it('closes a client that goes silent past 1.5 × its keepalive with 4010 and a reason', async () => {
    const c = await rawMqtt(t.url, await t.registerDevice('dev-silent'));
    expect((await rawConnect(c, 'dev-silent', { keepalive: 1 })).returnCode).toBe(0);
    const { code, reason } = await c.closed;
    expect(code).toBe(4010);
    expect(reason).toMatch(/keepalive/);
    expect(await metrics()).toMatch(/fleetwire_broker_disconnects_total\{reason="keepalive-timeout"\} [1-9]/);
  });

  it('closes a socket that sends no CONNECT in time with 4011 and a reason', async () => {
    const c = await rawMqtt(t.url, null);
    const { code, reason } = await c.closed;
    expect(code).toBe(4011);
    expect(reason).toMatch(/CONNECT/);
    expect(await metrics()).toMatch(/fleetwire_broker_disconnects_total\{reason="connect-timeout"\} [1-9]/);
  });

  it('closes a CONNECT with another protocol name with 4006 and the parser\'s reason', async () => {
    const c = await rawMqtt(t.url, await t.registerDevice('dev-proto'));
    c.ws.send(connectBytes({ protocolId: 'MQTX' as 'MQTT', clientId: 'dev-proto' }));
    const { code, reason } = await c.closed;
    expect(code).toBe(4006);
    expect(reason).toMatch(/protocol/i);
    expect(await metrics()).toMatch(/fleetwire_broker_malformed_input_total\{kind="connect"\} [1-9]/);
  });

  it('answers an MQTT 5 CONNECT with CONNACK 1, then closes with 4006 saying which MQTT versions are spoken [MQTT-3.1.2-2]', async () => {
    const c = await rawMqtt(t.url, await t.registerDevice('dev-level5'));
    c.ws.send(connectBytes({ clientId: 'dev-level5', protocolVersion: 5 }));
    const { code, reason } = await c.closed;
    expect(code).toBe(4006);
    expect(reason).toMatch(/MQTT 3.1.1/);
    expect(c.packets).toEqual([expect.objectContaining({ cmd: 'connack', returnCode: 1 })]);
  });

  it('closes a CONNECT with an unknown protocol level with 4006, saying which MQTT versions are spoken', async () => {
    const c = await rawMqtt(t.url, await t.registerDevice('dev-level9'));
    const bytes = Buffer.from(connectBytes({ clientId: 'dev-level9' }));
    bytes[8] = 9; // fixed header (2) + protocol name (2 + 4): the level byte
    c.ws.send(bytes);
    const { code, reason } = await c.closed;
    expect(code).toBe(4006);
    expect(reason).toMatch(/protocol version.*MQTT 3.1.1/i);
  });

  it('closes a connection that sends a second CONNECT with 4006 [MQTT-3.1.0-2]', async () => {
    const c = await rawMqtt(t.url, await t.registerDevice('dev-twice'));
    expect((await rawConnect(c, 'dev-twice')).returnCode).toBe(0);
    c.ws.send(connectBytes({ clientId: 'dev-twice' }));
    const { code, reason } = await c.closed;
    expect(code).toBe(4006);
    expect(reason).toMatch(/second CONNECT/);
    expect(await metrics()).toMatch(/fleetwire_broker_disconnects_total\{reason="malformed"\} [1-9]/);
  });
});

describe('normal closes', () => {
  it('does not count a client that closes right after publishing as malformed input', async () => {
    const before = await metrics();
    const parserBefore = Number(/malformed_input_total\{kind="parser"\} (\d+)/.exec(before)?.[1] ?? 0);
    const logsBefore = t.logs.length;
    const token = await t.registerDevice('dev-quick');
    for (let i = 0; i < 15; i++) {
      const c = await rawMqtt(t.url, token);
      await rawConnect(c, 'dev-quick');
      c.send({ cmd: 'publish', topic: 'devices/dev-quick/heartbeat', qos: 1, messageId: 1, retain: false, dup: false, payload: JSON.stringify({ seq: i, uptime_s: 1, rssi: -40, heap_free: 1, fw: '1.0.0' }) });
      c.ws.close(); // before the PUBACK can be written
      await c.closed;
    }
    await sleep(300);
    const after = await metrics();
    expect(Number(/malformed_input_total\{kind="parser"\} (\d+)/.exec(after)?.[1] ?? 0)).toBe(parserBefore);
    const lines = t.logs.slice(logsBefore).join('');
    expect(lines).not.toMatch(/malformed MQTT input/);
    expect(lines).not.toMatch(/"reason":"malformed"/);
  });

  it('logs "client connected" before anything else about that connection', async () => {
    const logsBefore = t.logs.length;
    const token = await t.registerDevice('dev-order');
    for (let i = 0; i < 10; i++) {
      const c = await connect(t.url, token, 'dev-order');
      await c.endAsync();
    }
    await waitFor(() => t.logs.slice(logsBefore).filter((l) => l.includes('"client disconnected"') && l.includes('dev-order')).length, (n) => n === 10);
    const events = t.logs.slice(logsBefore)
      .map((l) => JSON.parse(l) as { msg: string; client_id?: string })
      .filter((l) => l.client_id === 'dev-order' && (l.msg === 'client connected' || l.msg === 'client disconnected'))
      .map((l) => l.msg);
    expect(events).toEqual(Array.from({ length: 10 }, () => ['client connected', 'client disconnected']).flat());
  });
});
