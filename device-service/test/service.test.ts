import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFleet, type Fleet } from './helpers.js';

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
