import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeOf, connect, nextMessage, sleep, startBroker, subackCodes, telemetry, type TestBroker } from './helpers.js';

let t: TestBroker;
beforeAll(async () => {
  t = await startBroker();
});
afterAll(async () => t.close());

describe('topic ACL', () => {
  it('refuses a device subscription that would reach other devices or $SYS, grants its own topics', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-acl-a'), 'dev-acl-a');
    const codes = await subackCodes(c, ['#', 'devices/+/cmd', '$SYS/#', '+/+/heartbeat', 'fleet/presence/#', 'devices/dev-acl-b/cmd', 'devices/dev-acl-a/cmd', 'devices/dev-acl-a/#'], 1);
    expect(codes).toEqual([128, 128, 128, 128, 128, 128, 1, 1]);
    await c.endAsync();
  });

  it('a device cannot publish into another device\'s topics; the publisher is disconnected and nobody receives it', async () => {
    const victim = await connect(t.url, await t.registerDevice('dev-victim'), 'dev-victim');
    await victim.subscribeAsync('devices/dev-victim/#');
    const received: string[] = [];
    victim.on('message', (topic) => received.push(topic));
    const attacker = await connect(t.url, await t.registerDevice('dev-attacker'), 'dev-attacker');
    const closed = closeOf(attacker);
    attacker.publish('devices/dev-victim/cmd', JSON.stringify({ cid: 'x', name: 'reboot', args: {}, expires_at: Date.now() + 1000 }), { qos: 0 });
    expect(await closed).toEqual({ code: 4008, reason: 'device dev-attacker may not publish to devices/dev-victim/cmd' });
    await sleep(200);
    expect(received).toEqual([]);
    await victim.endAsync();
  });

  it('a device cannot publish to cloud-to-device topics of its own, nor to presence', async () => {
    const d = await connect(t.url, await t.registerDevice('dev-selfcmd'), 'dev-selfcmd');
    const closed = closeOf(d);
    d.publish('fleet/presence/dev-selfcmd', '{"online":false}', { qos: 0 });
    await closed;
    const metrics = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/fleetwire_broker_acl_denied_total\{action="publish"\} [1-9]/);
  });

  it('a service delivers a command to a device, and reads the device\'s telemetry', async () => {
    const device = await connect(t.url, await t.registerDevice('dev-cmd'), 'dev-cmd');
    await device.subscribeAsync('devices/dev-cmd/cmd', { qos: 1 });
    const svc = await connect(t.url, await t.mint({ sub: 'ops', typ: 'service' }), 'service:ops:1');
    await svc.subscribeAsync('devices/+/telemetry');
    const cmd = { cid: 'c-1', name: 'ping', args: {}, expires_at: Date.now() + 60_000 };
    const got = nextMessage(device, 'devices/dev-cmd/cmd');
    await svc.publishAsync('devices/dev-cmd/cmd', JSON.stringify(cmd), { qos: 1 });
    expect(JSON.parse((await got).toString())).toEqual(cmd);
    const tele = nextMessage(svc, 'devices/dev-cmd/telemetry');
    const reading = telemetry(21.5);
    await device.publishAsync('devices/dev-cmd/telemetry', reading, { qos: 1 });
    expect((await tele).toString()).toBe(reading);
    await Promise.all([device.endAsync(), svc.endAsync()]);
  });

  it('a viewer may watch presence but not send commands', async () => {
    const viewer = await connect(t.url, await t.mint({ sub: 'vic', typ: 'user', role: 'viewer' }), 'user:vic:1');
    expect(await subackCodes(viewer, ['fleet/presence/+', '$SYS/#'])).toEqual([0, 128]);
    const closed = closeOf(viewer);
    viewer.publish('devices/dev-cmd/cmd', '{}', { qos: 0 });
    await closed;
  });
});
