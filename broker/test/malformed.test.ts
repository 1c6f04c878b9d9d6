import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { randomBytes } from 'node:crypto';
import { connect, nextMessage, startBroker, telemetry, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
  t = await startBroker({ connectAttemptsPerIp: 10_000 });
});
afterAll(async () => t.close());

function openRaw(): Promise<WebSocket> {
  const ws = new WebSocket(t.url, ['mqtt']);
  ws.on('error', () => undefined);
  return new Promise((resolve) => ws.once('open', () => resolve(ws)));
}

const closed = (ws: WebSocket) => new Promise<number>((r) => ws.once('close', (code) => r(code)));

describe('malformed input', () => {
  it('closes only the offending connection while others keep being served', async () => {
    const dev = await connect(t.url, await t.registerDevice('dev-steady'), 'dev-steady');
    const svc = await connect(t.url, await t.mint({ sub: 'steady', typ: 'service' }), 'service:steady:1');
    await svc.subscribeAsync('devices/dev-steady/telemetry');

    const attackers = await Promise.all(Array.from({ length: 30 }, () => openRaw()));
    const ends = attackers.map(closed);
    attackers.forEach((ws, i) => {
      if (i % 3 === 0) ws.send(randomBytes(64 + i));               // random bytes
      else if (i % 3 === 1) ws.send('CONNECT please');              // a text frame
      else ws.send(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f])); // remaining length longer than 4 bytes
    });
    for (let i = 0; i < 20; i++) {
      const got = nextMessage(svc, 'devices/dev-steady/telemetry');
      await dev.publishAsync('devices/dev-steady/telemetry', telemetry(i), { qos: 1 });
      expect(JSON.parse((await got).toString())).toMatchObject({ readings: [{ value: i }] });
    }
    const codes = await Promise.all(ends);
    expect(codes.every((c) => c >= 4000 || c === 1006 || c === 1000)).toBe(true);
    expect(codes.filter((c) => c === 4006).length).toBeGreaterThanOrEqual(20);
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_malformed_input_total\{kind="malformed"\} \d+/);
    await Promise.all([dev.endAsync(), svc.endAsync()]);
  });

  it('refuses a first packet that is not CONNECT', async () => {
    const ws = await openRaw();
    const end = closed(ws);
    ws.send(Buffer.from([0xc0, 0x00])); // PINGREQ before CONNECT
    expect(await end).toBe(4006);
  });

  it('survives a connection that sends a valid CONNECT followed by garbage', async () => {
    const token = await t.registerDevice('dev-garb');
    const ws = new WebSocket(t.url, ['mqtt', `auth.${token}`]);
    await new Promise((r) => ws.once('open', r));
    const end = closed(ws);
    const mqttPacket = (await import('mqtt-packet')).default;
    ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-garb', keepalive: 30 }));
    ws.send(Buffer.from([0x30, 0x03, 0xff, 0xff, 0x00])); // PUBLISH whose topic length overruns the packet
    await end;
    expect((await fetch(`${t.httpUrl}/healthz`)).status).toBe(200);
  });
});
