/**
 * [MQTT-3.3.1-1] A QoS 1/2 PUBLISH that the broker sends again after a
 * reconnect (persistent session, not acknowledged before) carries DUP=1;
 * strict clients drop a connection that resends a QoS 2 message without it.
 * Plain Aedes resends stored messages unchanged (moscajs/aedes#601); the
 * control test below shows that, so it tells when upstream has fixed it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Aedes } from 'aedes';
import { WebSocketServer, createWebSocketStream } from 'ws';
import type { AddressInfo } from 'node:net';
import type mqttPacket from 'mqtt-packet';
import { connect, rawConnect, rawMqtt, type RawMqtt, startBroker, type TestBroker } from './helpers.js';

let t: TestBroker | undefined;
afterEach(async () => { await t?.close(); t = undefined; });

type Publish = mqttPacket.IPublishPacket;
const isPublish = (p: mqttPacket.Packet): p is Publish => p.cmd === 'publish';

/**
 * A persistent-session subscriber receives a message and disconnects without
 * acknowledging it, then reconnects; returns the first and the second delivery.
 * `open` gives a raw connection; `publish` sends one message to the device.
 */
async function redeliver(open: () => Promise<RawMqtt>, clientId: string, qos: 1 | 2, publish: (payload: string) => Promise<void>): Promise<{ first: Publish; again: Publish; session: boolean }> {
  const c1 = await open();
  expect((await rawConnect(c1, clientId, { clean: false })).returnCode).toBe(0);
  c1.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${clientId}/cmd`, qos }] });
  await c1.next((p) => p.cmd === 'suback');
  await publish(JSON.stringify({ cid: `dup-${qos}`, name: 'ping', args: {}, expires_at: Date.now() + 60_000 }));
  const first = (await c1.next(isPublish)) as Publish;
  c1.ws.terminate(); // gone without PUBACK / PUBREC
  await c1.closed;

  const c2 = await open();
  const connack = await rawConnect(c2, clientId, { clean: false });
  const again = (await c2.next(isPublish)) as Publish;
  c2.send(qos === 1 ? { cmd: 'puback', messageId: again.messageId } : { cmd: 'pubrec', messageId: again.messageId });
  c2.ws.close();
  return { first, again, session: connack.sessionPresent };
}

describe('redelivery after a reconnect', () => {
  for (const cluster of ['none', 'redis'] as const) {
    for (const qos of [1, 2] as const) {
      it(`resends an unacknowledged QoS ${qos} message with DUP=1 and the same packet id (BROKER_CLUSTER=${cluster})`, async () => {
        t = await startBroker({ cluster });
        const broker = t;
        const id = `dev-dup-${qos}-${cluster}`;
        const token = await broker.registerDevice(id);
        const svc = await connect(broker.url, await broker.mint({ sub: 'ctl', typ: 'service' }), 'service:ctl:1');
        const { first, again, session } = await redeliver(() => rawMqtt(broker.url, token), id, qos,
          async (payload) => { await svc.publishAsync(`devices/${id}/cmd`, payload, { qos }); });
        await svc.endAsync();
        expect(session).toBe(true);
        expect(first.dup).toBe(false);
        expect(again.dup).toBe(true);
        expect(again.messageId).toBe(first.messageId);
        expect(again.payload.toString()).toBe(first.payload.toString());
      });
    }
  }

  it('sends a message queued while the device was offline with DUP=0: it was never sent before', async () => {
    t = await startBroker();
    const broker = t;
    const token = await broker.registerDevice('dev-queued');
    const c1 = await rawMqtt(broker.url, token);
    await rawConnect(c1, 'dev-queued', { clean: false });
    c1.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev-queued/cmd', qos: 1 }] });
    await c1.next((p) => p.cmd === 'suback');
    c1.send({ cmd: 'disconnect' });
    await c1.closed;
    await broker.broker.sendToDevice('dev-queued', 'cmd', { cid: 'q-1', name: 'ping', args: {}, expires_at: Date.now() + 60_000 });
    const c2 = await rawMqtt(broker.url, token);
    await rawConnect(c2, 'dev-queued', { clean: false });
    const delivered = (await c2.next(isPublish)) as Publish;
    expect(delivered.dup).toBe(false);
    c2.ws.close();
  });
});

describe('plain Aedes (control)', () => {
  it('resends a stored QoS 1 message with DUP=0 (moscajs/aedes#601): the reason Fleetwire sets DUP itself', async () => {
    const aedes = await Aedes.createBroker();
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    wss.on('connection', (ws) => aedes.handle(createWebSocketStream(ws)));
    await new Promise((r) => wss.once('listening', r));
    const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`;
    try {
      const { first, again } = await redeliver(() => rawMqtt(url, null), 'dev-plain', 1, (payload) => new Promise((resolve) => {
        aedes.publish({ cmd: 'publish', topic: 'devices/dev-plain/cmd', payload: Buffer.from(payload), qos: 1, retain: false, dup: false }, () => resolve());
      }));
      expect(first.dup).toBe(false);
      expect(again.messageId).toBe(first.messageId);
      expect(again.dup).toBe(false);
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((r) => wss.close(r));
      await new Promise<void>((r) => aedes.close(() => r()));
    }
  });
});
