/**
 * Device inference end to end: `fleetwire up` over TLS (broker, ml-bridge and the Python
 * worker it supervises, the shipped `anomaly` model in onnxruntime) and
 * `fleetwire-sim ... ml`, the firmware's core asking as a device: request on
 * devices/{id}/ml/infer, the answer with the same cid on devices/{id}/ml/result, printed
 * by the simulator as one JSON line, its exit status saying how it went.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SIM, startStack, type Stack } from './stack.js';

const DEVICE = 'ml-sim-01';
/** A normal reading (temperature_c, humidity_pct, vibration_g, current_a) and a failing motor's. */
const NORMAL = [21.5, 40, 0.02, 1.3];
const FAULTY = [85, 5, 4, 15];

let stack: Stack;
let apiKey: string;

beforeAll(async () => {
  stack = await startStack();
  apiKey = await stack.registerDevice(DEVICE);
}, 60_000);
afterAll(async () => {
  await stack?.stop();
});

interface MlAnswer {
  cid: string;
  ok: boolean;
  output?: { score: number[]; anomaly: boolean[] };
  error?: { code: string; message: string };
  model_version: string;
}

/** `fleetwire-sim ... ml <args>` as the device: exit code, the answer line (stdout), stderr. */
function askAsDevice(args: string[]): Promise<{ code: number | null; answer: MlAnswer | undefined; stdout: string; stderr: string }> {
  if (!existsSync(SIM)) throw new Error(`${SIM} is missing: cargo build --manifest-path firmware-esp32/Cargo.toml -p fleetwire-sim (make test does)`);
  return new Promise((resolve) => {
    const child = spawn(SIM, [
      '--url', stack.url.replace('https', 'wss'), '--ca', stack.caFile, '--no-webpki-roots',
      '--device-id', DEVICE, '--telemetry-s', '0', 'ml', ...args,
    ], { env: { PATH: process.env.PATH, FLEETWIRE_API_KEY: apiKey } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      const line = stdout.trim();
      resolve({ code, stdout, stderr, answer: line ? JSON.parse(line) as MlAnswer : undefined });
    });
  });
}

// The first request may wait for the worker to finish loading its models, so it gets a
// deadline (and the simulator a timeout) well above that; later ones use the defaults.
const FIRST_WAIT = ['--deadline-ms', '20000', '--timeout-s', '30'];

describe('device inference through fleetwire-sim ml', () => {
  it('answers a batch of readings with one score per row from the newest model version, and flags the faulty row', async () => {
    const { code, stdout, stderr, answer } = await askAsDevice([
      '--model', 'anomaly', '--input', JSON.stringify([NORMAL, FAULTY]), ...FIRST_WAIT,
    ]);
    expect(code, stderr).toBe(0);
    expect(stdout.trim().split('\n')).toHaveLength(1);
    expect(answer).toMatchObject({ ok: true, model_version: '2' });
    // The cid the device made up for its request (the core's `ml-<boot nonce>-<n>`), logged when it asked.
    expect(answer!.cid).toMatch(/^ml-[0-9a-f]{16}-1$/);
    expect(stderr).toContain(`event=ml-request cid=${answer!.cid} model=anomaly`);
    const { score, anomaly } = answer!.output!;
    expect(score).toHaveLength(2);
    expect(anomaly).toHaveLength(2);
    expect(score.every(Number.isFinite)).toBe(true);
    expect(score[1]).toBeGreaterThan(score[0]!);
    expect(anomaly).toEqual([false, true]);
  }, 45_000);

  it('answers from a pinned version when the device asks for one', async () => {
    const { code, stderr, answer } = await askAsDevice(['--model', 'anomaly', '--version', '1', '--input', JSON.stringify([NORMAL]), ...FIRST_WAIT]);
    expect(code, stderr).toBe(0);
    expect(answer).toMatchObject({ ok: true, model_version: '1' });
    expect(answer!.output!.score).toHaveLength(1);
  }, 45_000);

  it('reports an unknown model as an error answer with its code and exits 1', async () => {
    const { code, stderr, answer } = await askAsDevice(['--model', 'no-such-model', '--input', JSON.stringify([NORMAL]), ...FIRST_WAIT]);
    expect(code, stderr).toBe(1);
    expect(answer).toMatchObject({ ok: false, error: { code: 'model_unknown' } });
    expect(answer!.cid).toMatch(/^ml-[0-9a-f]{16}-1$/);
    expect(answer!.output).toBeUndefined();
    expect(stderr).toContain('model_unknown');
  }, 45_000);

  it('refuses input that is not rows of numbers before connecting, with exit status 2', async () => {
    const { code, stderr, answer } = await askAsDevice(['--model', 'anomaly', '--input', '[[21.5, 40']);
    expect(code).toBe(2);
    expect(answer).toBeUndefined();
    expect(stderr).toContain('JSON array of rows of numbers');
  });
});
