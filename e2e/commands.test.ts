/**
 * A fleet command end to end: `fleetwire up` over TLS, 20 devices run by the firmware
 * simulator (one process, --keys-file), and `fleetwire devices command` as an operator
 * runs it, following the batch until every device answered.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, startSim, startStack, until, type Sim, type Stack } from './stack.js';

const DEVICES = Array.from({ length: 20 }, (_, i) => `fleet-sim-${String(i + 1).padStart(2, '0')}`);
let stack: Stack;
let sim: Sim;

beforeAll(async () => {
  stack = await startStack();
  await stack.admin(); // one login first: registerDevice logs in on first use, and 20 at once would hit the login limit
  const keys = await Promise.all(DEVICES.map(async (id) => `${id} ${await stack.registerDevice(id)}`));
  const keysFile = join(stack.dataDir, 'fleet-keys.txt');
  await writeFile(keysFile, `${keys.join('\n')}\n`, { mode: 0o600 });
  sim = startSim(stack, ['--keys-file', keysFile, '--devices', '20', '--heartbeat-s', '30', '--telemetry-s', '0']);
  await sim.waitFor(/stats devices=20 connected=20 /, 30_000);
}, 60_000);
afterAll(async () => {
  await sim?.stop();
  await stack?.stop();
});

function cli(args: string[], token: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'devices', 'command', ...args], {
      // The server's certificate is signed by the stack's private CA.
      env: { PATH: process.env.PATH, FLEETWIRE_URL: stack.url, FLEETWIRE_TOKEN: token, NODE_EXTRA_CA_CERTS: stack.caFile },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('a fleet command over 20 simulated devices', () => {
  it('reaches every device through the CLI, whose progress ends at 20/20 succeeded', async () => {
    const admin = await stack.admin();
    const run = await cli(['--name', 'set_heartbeat_interval', '--args', '{"seconds":45}', '--ids', DEVICES.join(','), '--rate', '10'], admin);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^fleet command [0-9a-f-]{36}: set_heartbeat_interval to 20 devices$/);
    // 10 a second over 20 devices: the progress shows the batch filling up, not only its end.
    const progress = lines.filter((l) => l.startsWith('['));
    expect(progress.length).toBeGreaterThan(2);
    expect(progress.at(-1)).toBe('[####################] 20/20 succeeded 20 failed 0 expired 0 timed_out 0 sent 0 delivered 0');
    expect(lines.at(-1)).toContain('all succeeded');

    // Every device ran it once and answered with what it applied.
    const batch = /fleet command ([0-9a-f-]{36})/.exec(lines[0]!)![1]!;
    const results = await Promise.all(DEVICES.map((_, i) => stack.api('GET', `/v1/commands/${batch}:${i}`, undefined, admin)));
    expect(results.map((r) => r.body.device_id)).toEqual(DEVICES);
    for (const r of results) expect(r.body).toMatchObject({ state: 'succeeded', ok: true, result: { interval_s: 45 }, batch });
    await sim.waitFor(/stats devices=20 connected=20 .* cmds=20 cmd_dups=0/);
    const state = await until(() => stack.api('GET', `/v1/commands/batches/${batch}`, undefined, admin), (r) => r.body.done === true);
    expect(state.body).toMatchObject({ total: 20, dispatched: 20, counts: { succeeded: 20 } });
  }, 40_000);
});
