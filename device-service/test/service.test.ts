import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, startServices } from '@fleetwire/common';
import { service as deviceService } from '../src/service.js';
import { REDIS_URL, startFleet, type Fleet } from './helpers.js';

let f: Fleet;
beforeAll(async () => { f = await startFleet(); });
afterAll(async () => { await f?.close(); });

describe('the device service in fleetwire up', () => {
  it('is ready once its broker link is up, and reports its settings in the spec', async () => {
    const ready = await f.api('GET', '/readyz');
    expect(ready.body).toMatchObject({ status: 'ready', checks: { 'device-service.broker_link': true } });
    const spec = await f.api('GET', '/v1/spec', { token: await f.tokenFor('admin') });
    expect(spec.body['device-service']).toMatchObject({ broker: 'this process\'s own /mqtt', silence: { floor_s: 3 } });
  });
});

describe('the device service alone (fleetwire device-service, as compose runs it)', () => {
  it('refuses to start without DEVICE_BROKER_URL, naming it, since no broker runs in its process', async () => {
    await expect(startServices([deviceService], { ...aloneEnv(), PORT: '0' }, { version: 'test', log: quiet() }))
      .rejects.toThrow(/DEVICE_BROKER_URL must name a broker node/);
  });

  it('publishes through another process\'s broker when given DEVICE_BROKER_URL, and consumes the queues next to it', async () => {
    const alone = await startServices([deviceService], { ...aloneEnv(), PORT: '0', DEVICE_BROKER_URL: f.mqttUrl }, { version: 'test', log: quiet() });
    try {
      const ready = await fetch(`http://127.0.0.1:${alone.port}/readyz`).then((r) => r.json() as Promise<{ status: string; checks: Record<string, boolean> }>);
      expect(ready).toMatchObject({ status: 'ready', checks: { 'device-service.broker_link': true } });
      const connections = await f.api('GET', '/v1/connections?kind=service', { token: await f.tokenFor('admin') });
      expect((connections.body.items as { client_id: string }[]).filter((c) => c.client_id.startsWith('service:device-service:'))).toHaveLength(2);
    } finally {
      await alone.stop();
    }
  });
});

/** The fleet's settings for a second process: same Redis and key folder (compose shares the volume). */
function aloneEnv(): Record<string, string> {
  return { REDIS_URL, HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: f.dataDir };
}

const quiet = () => createLogger({ level: 'error', name: 'alone', destination: new Writable({ write(_c, _e, cb) { cb(); } }) });
