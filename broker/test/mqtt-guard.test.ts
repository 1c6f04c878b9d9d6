import { afterEach, describe, expect, it, vi } from 'vitest';
import mqttPacket from 'mqtt-packet';
import { MqttIngressGuard, GuardError } from '../src/mqtt-guard.js';
import { PublishLimiter } from '../src/publish-limiter.js';

const connect = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-1', keepalive: 30 });
const publish = (n: number, size = 10) => mqttPacket.generate({ cmd: 'publish', topic: 'devices/dev-1/telemetry', payload: Buffer.alloc(size, n), qos: 0, retain: false, dup: false });
const publishQos1 = (n: number) => mqttPacket.generate({ cmd: 'publish', topic: 'devices/dev-1/telemetry', payload: Buffer.alloc(10, n), qos: 1, messageId: n, retain: false, dup: false });
const ping = mqttPacket.generate({ cmd: 'pingreq' });
const big = mqttPacket.generate({ cmd: 'publish', topic: 'devices/dev-1/telemetry', payload: Buffer.alloc(300, 7), qos: 0, retain: false, dup: false });

const noEvents = { onDrop: () => undefined, onHold: () => undefined };
const unlimited = () => new MqttIngressGuard(null, 1 << 20, noEvents);

function feed(guard: MqttIngressGuard, stream: Buffer, cuts: number[]): Buffer {
  const out: Buffer[] = [];
  let prev = 0;
  for (const cut of [...cuts, stream.length]) {
    const piece = guard.filter(stream.subarray(prev, cut));
    if (piece) out.push(piece);
    prev = cut;
  }
  return Buffer.concat(out);
}

afterEach(() => vi.useRealTimers());

describe('MQTT ingress guard', () => {
  const stream = Buffer.concat([connect, publish(1), ping, big, publish(2)]);

  it('passes a frame of whole, allowed packets through unchanged without copying', () => {
    const g = unlimited();
    const frame = Buffer.concat([connect, publish(1)]);
    expect(g.filter(frame)).toBe(frame);
  });

  it('reassembles the same bytes whatever the frame boundaries (every single cut point)', () => {
    for (let cut = 1; cut < stream.length; cut++) {
      expect(feed(unlimited(), stream, [cut]).equals(stream)).toBe(true);
    }
    const everyByte = Array.from({ length: stream.length - 1 }, (_, i) => i + 1);
    expect(feed(unlimited(), stream, everyByte).equals(stream)).toBe(true);
  });

  it('drops publishes over the limit, whole, and keeps every other packet, at any frame boundary', () => {
    const limits = { perS: 1, burst: 1, perMin: 100, bytesPerS: 1 << 20, bytesPerMin: 1 << 20 };
    const expected = Buffer.concat([connect, publish(1), ping]); // big and publish(2) are over the burst of 1
    for (let cut = 1; cut < stream.length; cut += 3) {
      const drops: string[] = [];
      const g = new MqttIngressGuard(new PublishLimiter(limits, 0), 1 << 20, { onDrop: (_o, l) => drops.push(l), onHold: () => undefined });
      expect(feed(g, stream, [cut]).equals(expected)).toBe(true);
      expect(drops).toEqual(['publish_messages', 'publish_messages']);
    }
  });

  it('holds a QoS 1 publish over the limit with everything after it, and lets it all through in order on release, at any frame boundary', () => {
    const limits = { perS: 1, burst: 1, perMin: 100, bytesPerS: 1 << 20, bytesPerMin: 1 << 20 };
    const qosStream = Buffer.concat([connect, publishQos1(1), publishQos1(2), ping, publishQos1(3)]);
    const firstPart = Buffer.concat([connect, publishQos1(1)]);
    for (let cut = 1; cut < qosStream.length; cut++) {
      vi.useFakeTimers({ toFake: ['Date'], now: 0 });
      const holds: string[] = [];
      const g = new MqttIngressGuard(new PublishLimiter(limits, 0), 1 << 20, { onDrop: () => undefined, onHold: (_o, l) => holds.push(l) });
      const out = [feed(g, qosStream, [cut])];
      expect(out[0]!.equals(firstPart)).toBe(true); // publish 2 waits for the next token
      expect(g.holding).toBe(true);
      expect(g.release()).toBeNull(); // still no room: held again
      vi.setSystemTime(1000);
      out.push(g.release() ?? Buffer.alloc(0)); // publish 2 and the ping pass; publish 3 waits
      vi.setSystemTime(2000);
      out.push(g.release() ?? Buffer.alloc(0));
      expect(Buffer.concat(out).equals(qosStream)).toBe(true);
      expect(g.holding).toBe(false);
      expect(holds.length).toBeGreaterThanOrEqual(3);
    }
  });

  it('refuses a second CONNECT on the same connection', () => {
    const g = unlimited();
    g.filter(connect);
    expect(() => g.filter(connect)).toThrow(/second CONNECT.*MQTT-3.1.0-2/);
  });

  it('refuses a packet over the size limit as soon as its header is read', () => {
    const g = new MqttIngressGuard(null, 200, noEvents);
    g.filter(connect);
    expect(() => g.filter(big.subarray(0, 3))).toThrow(GuardError);
    expect(g.filter(big.subarray(3))).toBeNull();
  });

  it('refuses a first packet that is not CONNECT, and reserved packet types', () => {
    expect(() => unlimited().filter(ping)).toThrow(/first packet must be CONNECT/);
    const g = unlimited();
    g.filter(connect);
    expect(() => g.filter(Buffer.from([0xf0, 0x00]))).toThrow(/reserved MQTT packet type 15/);
  });
});

describe('publish limiter', () => {
  const limits = { perS: 10, burst: 20, perMin: 100, bytesPerS: 1000, bytesPerMin: 50_000 };

  it('allows the burst, then refills at the sustained rate', () => {
    const l = new PublishLimiter(limits, 0);
    for (let i = 0; i < 20; i++) expect(l.take(1, 0)).toBeNull();
    expect(l.take(1, 0)).toBe('publish_messages');
    expect(l.take(1, 100)).toBeNull(); // 100 ms at 10/s refills one
    expect(l.take(1, 100)).toBe('publish_messages');
  });

  it('enforces the per-minute window even when the per-second one has room', () => {
    const l = new PublishLimiter({ ...limits, perS: 1000, burst: 1000 }, 0);
    for (let i = 0; i < 100; i++) expect(l.take(1, i * 5)).toBeNull();
    expect(l.take(1, 500)).toBe('publish_messages');
  });

  it('lets a publish larger than the byte budget through once the budget is full, then waits for the debt to refill', () => {
    const l = new PublishLimiter(limits, 0);
    expect(l.take(2500, 0)).toBeNull(); // over the 1000-byte budget, which was full
    expect(l.take(10, 1000)).toBe('publish_bytes'); // 1 s refilled 1000 of the 1500 owed
    expect(l.msUntilAllowed(10)).toBe(510);
    expect(l.take(10, 1510)).toBeNull();
  });

  it('limits bytes separately from messages and takes nothing when it refuses', () => {
    const l = new PublishLimiter(limits, 0);
    expect(l.take(900, 0)).toBeNull();
    expect(l.take(200, 0)).toBe('publish_bytes');
    expect(l.take(100, 0)).toBeNull();
  });
});
