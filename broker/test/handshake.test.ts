import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { request } from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { redisKeys } from '@fleetwire/common';
import { connackCode, startBroker, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
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

/**
 * A raw upgrade request written header line by header line, so a test can send what
 * real clients send (Paho repeats Sec-WebSocket-Protocol in another letter case).
 * Resolves with the answer's status, headers, body and, for a 101, the open socket.
 */
interface RawAnswer { status: number; headers: Record<string, string>; body: string; socket: net.Socket }
function rawHandshake(port: number, headerLines: string[], path = '/mqtt'): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [statusLine, ...lines] = buf.subarray(0, end).toString('latin1').split('\r\n');
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const status = Number(statusLine!.split(' ')[1]);
      const rest = buf.subarray(end + 4);
      if (status === 101) {
        socket.off('data', onData);
        if (rest.length) socket.unshift(rest);
        return resolve({ status, headers, body: '', socket });
      }
      const length = Number(headers['content-length'] ?? 0);
      if (rest.length < length) return;
      socket.off('data', onData);
      socket.destroy();
      resolve({ status, headers, body: rest.subarray(0, length).toString('utf8'), socket });
    };
    socket.on('data', onData);
    socket.on('error', reject);
    socket.write([`GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Upgrade: websocket', 'Connection: Upgrade', ...headerLines, '', ''].join('\r\n'));
  });
}

const KEY = 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==';
const VERSION = 'Sec-WebSocket-Version: 13';

/** Sends one MQTT packet in a masked binary frame (RFC 6455 §5.3) and reads the first answer frame's payload. */
async function mqttOverRawSocket(socket: net.Socket, packet: Buffer): Promise<Buffer> {
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(packet.map((b, i) => b ^ mask[i % 4]!));
  if (packet.length > 125) throw new Error('keep test packets under 126 bytes');
  socket.write(Buffer.concat([Buffer.from([0x82, 0x80 | packet.length]), mask, masked]));
  const [frame] = (await once(socket, 'data')) as [Buffer];
  return frame.subarray(2, 2 + frame[1]!);
}

async function connack(socket: net.Socket, clientId: string): Promise<number> {
  const mqttPacket = (await import('mqtt-packet')).default;
  const answer = await mqttOverRawSocket(socket, mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30 }));
  socket.destroy();
  expect(answer[0]).toBe(0x20); // CONNACK
  return answer[3]!;
}

describe('handshakes as common clients send them', () => {
  it('accepts the subprotocol header twice in different letter case, as Paho sends it, answers "mqtt" and authenticates the device', async () => {
    const token = await t.registerDevice('dev-paho');
    const res = await rawHandshake(t.port, [KEY, 'Sec-Websocket-Version: 13', 'Sec-Websocket-Protocol: mqtt', `Sec-WebSocket-Protocol: mqtt, auth.${token}`]);
    expect(res.status).toBe(101);
    expect(res.headers['sec-websocket-protocol']).toBe('mqtt');
    expect(JSON.stringify(res.headers)).not.toContain(token);
    expect(await connack(res.socket, 'dev-paho')).toBe(0);
  });

  it('accepts a repeated "mqtt" entry in one header, with or without spaces, wherever the token is', async () => {
    const token = await t.registerDevice('dev-repeat');
    for (const offer of [`mqtt, mqtt, auth.${token}`, `mqtt,mqtt,auth.${token}`, `auth.${token}, mqtt, mqtt`]) {
      const res = await rawHandshake(t.port, [KEY, VERSION, `Sec-WebSocket-Protocol: ${offer}`]);
      expect(res.status, offer.replace(token, '<jwt>')).toBe(101);
      expect(res.headers['sec-websocket-protocol']).toBe('mqtt');
      expect(await connack(res.socket, 'dev-repeat')).toBe(0);
    }
  });

  it('refuses two auth. entries with a JSON 400 naming the problem, even when they are the same token', async () => {
    const a = await t.registerDevice('dev-two-a');
    const b = await t.registerDevice('dev-two-b');
    for (const lines of [[`Sec-WebSocket-Protocol: mqtt, auth.${a}, auth.${b}`], ['Sec-WebSocket-Protocol: mqtt', `Sec-WebSocket-Protocol: auth.${a}, auth.${a}`]]) {
      const res = await rawHandshake(t.port, [KEY, VERSION, ...lines]);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toBe('application/json');
      expect(JSON.parse(res.body).error.code).toBe('BROKER_TOKEN_DUPLICATED');
      expect(res.body).not.toContain(a);
    }
  });

  it('refuses a malformed subprotocol list with a JSON 400', async () => {
    for (const offer of ['mqtt,, auth.abc', 'mqtt, auth.a=b', 'mqtt, ']) {
      const res = await rawHandshake(t.port, [KEY, VERSION, `Sec-WebSocket-Protocol: ${offer}`]);
      expect(res.status, offer).toBe(400);
      expect(JSON.parse(res.body).error.code, offer).toBe('BROKER_SUBPROTOCOL_INVALID');
    }
  });

  it('answers the WebSocket library\'s own refusals (bad key, bad version) with a JSON 400 and a log line', async () => {
    const token = await t.registerDevice('dev-badkey');
    const badKey = await rawHandshake(t.port, ['Sec-WebSocket-Key: not-a-key', VERSION, `Sec-WebSocket-Protocol: mqtt, auth.${token}`]);
    expect(badKey.status).toBe(400);
    expect(badKey.headers['content-type']).toBe('application/json');
    const err = JSON.parse(badKey.body).error;
    expect(err.code).toBe('BROKER_HANDSHAKE_INVALID');
    expect(err.message).toMatch(/Sec-WebSocket-Key/);
    const line = await waitFor(() => t.logs.find((l) => l.includes('BROKER_HANDSHAKE_INVALID')), Boolean);
    expect(JSON.parse(line!)).toMatchObject({ code: 'BROKER_HANDSHAKE_INVALID', ip: '127.0.0.1', status: 400 });
    expect(line).not.toContain(token);

    const badVersion = await rawHandshake(t.port, [KEY, 'Sec-WebSocket-Version: 99', 'Sec-WebSocket-Protocol: mqtt']);
    expect(badVersion.status).toBe(400);
    expect(JSON.parse(badVersion.body).error.code).toBe('BROKER_HANDSHAKE_INVALID');
    expect(badVersion.headers['sec-websocket-version']).toBe('13'); // RFC 6455 §4.4: the versions the server speaks
  });

  it('does not count refused handshakes against the address\'s connect attempts', async () => {
    await t.redis.del(redisKeys.connectAttempts('127.0.0.1'));
    const strict = await startBroker({ connectAttemptsPerIp: 3 });
    try {
      const token = await strict.registerDevice('dev-strict');
      const refused = [
        [KEY, VERSION, `Sec-WebSocket-Protocol: mqtt, auth.${token}, auth.${token}`],
        [KEY, VERSION, 'Sec-WebSocket-Protocol: mqtt,, x'],
        ['Sec-WebSocket-Key: short', VERSION, `Sec-WebSocket-Protocol: mqtt, auth.${token}`],
        [KEY, 'Sec-WebSocket-Version: 7', `Sec-WebSocket-Protocol: mqtt, auth.${token}`],
        [KEY, VERSION, `Sec-WebSocket-Protocol: auth.${token}`],
        [KEY, VERSION, 'Sec-WebSocket-Protocol: mqtt, auth.a, auth.b'],
      ];
      for (const lines of refused) expect((await rawHandshake(strict.port, lines)).status).toBe(400);
      expect(await connackCode(strict.url, token, 'dev-strict')).toBe(0);
    } finally {
      await strict.close();
    }
  });
});
