/**
 * README "Connecting with common clients": each snippet is quoted from a file that a
 * test runs, and the quote cannot drift from it. The mqtt.js example runs here against
 * a real broker; Paho runs in e2e/python, the firmware's handshake in e2e/ and cargo test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { createRedis, queues } from '@fleetwire/common';
import { queuedEnvelopes, REDIS_URL, startBroker, waitFor, type TestBroker } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (path: string): string => readFileSync(ROOT + path, 'utf8');

/** The lines between `readme:start` and `readme:end`, with their common indentation removed. */
function quoted(path: string): string {
  const lines = read(path).split('\n');
  const start = lines.findIndex((l) => l.includes('readme:start'));
  const end = lines.findIndex((l) => l.includes('readme:end'));
  if (start < 0 || end < start) throw new Error(`${path} has no readme:start … readme:end markers`);
  const body = lines.slice(start + 1, end);
  const indent = Math.min(...body.filter((l) => l.trim()).map((l) => l.length - l.trimStart().length));
  return body.map((l) => l.slice(indent)).join('\n');
}

describe('Connecting with common clients (README)', () => {
  it('quotes each client snippet exactly as the file that the tests run holds it', () => {
    const readme = read('README.md');
    const section = readme.slice(readme.indexOf('## Connecting with common clients'));
    for (const path of ['examples/device.mjs', 'examples/paho_device.py', 'firmware-esp32/esp32/src/session.rs']) {
      expect(section, `README.md must quote ${path} between its readme: markers`).toContain(quoted(path));
    }
  });

  describe('the mqtt.js example (examples/device.mjs)', () => {
    let t: TestBroker;
    const conn = createRedis(REDIS_URL, { name: 'test-readme-queues', maxRetriesPerRequest: null });
    beforeAll(async () => {
      t = await startBroker();
    });
    afterAll(async () => {
      await t.close();
      conn.disconnect();
    });

    function run(id: string, token: string): { output: () => string; exited: Promise<number | null> } {
      const child = spawn(process.execPath, [ROOT + 'examples/device.mjs', id, token, t.url], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr.on('data', (d: Buffer) => (output += d.toString()));
      return { output: () => output, exited: new Promise((resolve) => child.once('exit', resolve)) };
    }

    it('connects with its token, its heartbeat reaches the queue, and a kick ends it with close code 4000', async () => {
      const device = run('dev-readme-js', await t.registerDevice('dev-readme-js'));
      await waitFor(() => device.output(), (o) => o.includes('connected as dev-readme-js'));
      const heartbeats = new Queue('heartbeats', { connection: conn, prefix: queues.prefix });
      const queued = await waitFor(() => queuedEnvelopes(heartbeats), (envelopes) => envelopes.some((e) => e.device_id === 'dev-readme-js'));
      expect(queued.find((e) => e.device_id === 'dev-readme-js')!.payload).toMatchObject({ seq: 0, fw: 'example-1.0.0' });
      await t.broker.kick('dev-readme-js', 'readme test', 'test');
      expect(await device.exited).toBe(0);
      expect(device.output()).toMatch(/connection closed: code 4000/);
    });

    it('says the connection was refused for a token the broker does not accept', async () => {
      await t.registerDevice('dev-readme-bad');
      const device = run('dev-readme-bad', 'not-a-jwt');
      expect(await device.exited).toBe(1);
      expect(device.output()).toMatch(/refused: .*Bad username or password/i);
    });
  });
});
