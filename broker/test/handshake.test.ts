import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { request } from 'node:http';
import { connackCode, flushRedis, startBroker, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
  await flushRedis();
  t = await startBroker();
});
afterAll(async () => t.close());

/** A raw upgrade request; resolves with the HTTP status and headers of the answer. */
function rawUpgrade(path: string, protocols: string | undefined): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1', port: t.port, path,
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...(protocols ? { 'Sec-WebSocket-Protocol': protocols } : {}),
      },
    });
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve({ status: res.statusCode!, headers: res.headers, body: '' }); });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('WebSocket handshake', () => {
  it('answers 101 with exactly "mqtt" and never echoes the token', async () => {
    const token = await t.registerDevice('dev-hs');
    const res = await rawUpgrade('/mqtt', `mqtt, auth.${token}`);
    expect(res.status).toBe(101);
    expect(res.headers['sec-websocket-protocol']).toBe('mqtt');
    expect(JSON.stringify(res.headers)).not.toContain(token);
  });

  it('selects mqtt even when the token is offered first', async () => {
    const token = await t.registerDevice('dev-hs2');
    const res = await rawUpgrade('/mqtt', `auth.${token}, mqtt`);
    expect(res.status).toBe(101);
    expect(res.headers['sec-websocket-protocol']).toBe('mqtt');
  });

  it('answers 400 with a clear error when mqtt is not offered', async () => {
    const res = await rawUpgrade('/mqtt', 'auth.abc');
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).error.code).toBe('BROKER_SUBPROTOCOL_REQUIRED');
    expect((await rawUpgrade('/mqtt', undefined)).status).toBe(400);
  });

  it('answers 404 for upgrades on other paths', async () => {
    expect((await rawUpgrade('/other', 'mqtt')).status).toBe(404);
  });

  it('ignores a token in the query string', async () => {
    const token = await t.registerDevice('dev-query');
    const url = `${t.url}?token=${token}&auth=${token}`;
    expect(await connackCode(url, null, 'dev-query')).toBe(4);
  });

  it('a browser-style client with only the subprotocol gets through the handshake and a CONNACK 4', async () => {
    const ws = new WebSocket(t.url, ['mqtt']);
    await new Promise((r) => ws.once('open', r));
    expect(ws.protocol).toBe('mqtt');
    ws.close();
  });

  it('records the client address from X-Forwarded-For only when the peer is a trusted proxy', async () => {
    const trusted = await startBroker({ trustedProxies: ['127.0.0.1'] });
    const op = await trusted.mint({ sub: 'op', typ: 'user', role: 'operator' });
    const viaProxy = async (b: TestBroker, id: string) => {
      const token = await b.registerDevice(id);
      const ws = new WebSocket(b.url, ['mqtt', `auth.${token}`], { headers: { 'X-Forwarded-For': '203.0.113.9, 127.0.0.1' } });
      await new Promise((r) => ws.once('open', r));
      const mqttPacket = (await import('mqtt-packet')).default;
      ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: id, keepalive: 30 }));
      const rec = await waitFor(() => fetch(`${b.httpUrl}/v1/connections/${id}`, { headers: { authorization: `Bearer ${op}` } }), (r) => r.status === 200);
      ws.close();
      return (await rec.json()).ip as string;
    };
    expect(await viaProxy(trusted, 'dev-proxied')).toBe('203.0.113.9');
    await trusted.close();
    // The default broker trusts no proxy: the header is ignored.
    const opDefault = await t.mint({ sub: 'op', typ: 'user', role: 'operator' });
    const token = await t.registerDevice('dev-spoof');
    const ws = new WebSocket(t.url, ['mqtt', `auth.${token}`], { headers: { 'X-Forwarded-For': '203.0.113.9' } });
    await new Promise((r) => ws.once('open', r));
    const mqttPacket = (await import('mqtt-packet')).default;
    ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-spoof', keepalive: 30 }));
    const rec = await waitFor(() => fetch(`${t.httpUrl}/v1/connections/dev-spoof`, { headers: { authorization: `Bearer ${opDefault}` } }), (r) => r.status === 200);
    expect((await rec.json()).ip).toBe('127.0.0.1');
    ws.close();
  });

  it('closes a WebSocket message larger than the payload limit with 1009', async () => {
    const small = await startBroker({ wsMaxPayloadBytes: 2048, maxPacketBytes: 1_000_000 });
    const ws = new WebSocket(small.url, ['mqtt']);
    await new Promise((r) => ws.once('open', r));
    const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    ws.send(Buffer.alloc(4096));
    expect(await closed).toBe(1009);
    await small.close();
  });

  it('serves health, readiness and OpenAPI on the same port', async () => {
    expect((await fetch(`${t.httpUrl}/healthz`)).status).toBe(200);
    const ready = await fetch(`${t.httpUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect((await ready.json()).checks.redis).toBe(true);
    const spec = await (await fetch(`${t.httpUrl}/docs/json`)).json();
    expect(Object.keys(spec.paths)).toContain('/v1/connections/{id}');
    const unknown = await fetch(`${t.httpUrl}/v1/nope`);
    expect(unknown.status).toBe(404);
    expect((await unknown.json()).error.code).toBe('NOT_FOUND');
  });
});
