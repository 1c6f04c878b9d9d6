/**
 * `fleetwire rollouts create|watch|pause|resume|cancel` as an operator runs them (the
 * built CLI, spawned; `make build` first). The server here is a small local one speaking
 * the /v1/rollouts contract (201 view on create; GET a view whose counts move on at each
 * poll; pause/resume/cancel → view or 409; errors as {"error": {"code", "message"}}): the
 * CLI's outside world, so its requests, output and exit status are what is checked.
 */
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RolloutView } from '../src/rollouts-cli.js';

const CLI = fileURLToPath(new URL('../../cli/dist/main.js', import.meta.url));
const TOKEN = 'operator-token';
const SHA = 'ab'.repeat(32);
const STATES = ['pending', 'skipped', 'offered', 'downloading', 'verifying', 'rebooting', 'succeeded', 'failed', 'refused', 'rolled_back', 'timed_out'] as const;
type Counts = RolloutView['counts'];
const counts = (c: Partial<Counts>): Counts => Object.fromEntries(STATES.map((s) => [s, c[s] ?? 0])) as Counts;

/** What a rollout goes through, a step per GET while running: [counts, waves started, state]. */
type Step = [Partial<Counts>, number, RolloutView['state']];
const SCRIPTS: Record<string, Step[]> = {
  // 20 devices in waves of 10% → 50% → 100%, 2 skipped as incompatible: every offered one succeeds.
  clean: [
    [{ pending: 16, skipped: 2, offered: 2 }, 1, 'running'],
    [{ pending: 16, skipped: 2, downloading: 1, verifying: 1 }, 1, 'running'],
    [{ pending: 16, skipped: 2, succeeded: 2 }, 1, 'running'],
    [{ pending: 9, skipped: 2, succeeded: 2, offered: 4, rebooting: 3 }, 2, 'running'],
    [{ pending: 9, skipped: 2, succeeded: 9 }, 2, 'running'],
    [{ skipped: 2, succeeded: 12, downloading: 6 }, 3, 'running'],
    [{ skipped: 2, succeeded: 18 }, 3, 'completed'],
  ],
  // Devices that come back on the old image: over the threshold, the rollout aborts itself.
  failing: [
    [{ pending: 18, offered: 2 }, 1, 'running'],
    [{ pending: 10, succeeded: 1, rolled_back: 1, rebooting: 8 }, 2, 'running'],
    [{ pending: 10, succeeded: 4, rolled_back: 4, failed: 1, timed_out: 1 }, 2, 'aborted'],
  ],
};

interface Rollout { view: RolloutView; script: Step[]; step: number }
interface Seen { method: string; url: string; auth: string | undefined; body: unknown }

let server: Server;
let url: string;
const rollouts = new Map<string, Rollout>();
let seen: Seen[] = [];
let nextId = 1;

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}
const error = (res: ServerResponse, status: number, code: string, message: string): void => send(res, status, { error: { code, message } });

function apply(r: Rollout): void {
  const [c, started, state] = r.script[Math.min(r.step, r.script.length - 1)]!;
  r.view.counts = counts(c);
  r.view.counts_by_wave = r.view.waves.map(() => counts({}));
  r.view.waves.forEach((w, i) => { w.started_at = i < started ? 1_700_000_000_000 + i : null; });
  r.view.current_wave = started - 1;
  r.view.state = state;
  const finished = r.view.counts.succeeded + r.view.counts.failed + r.view.counts.rolled_back + r.view.counts.timed_out;
  r.view.failure_ratio = finished === 0 ? 0 : (r.view.counts.failed + r.view.counts.rolled_back + r.view.counts.timed_out) / finished;
  if (state === 'aborted') r.view.abort_reason = `failure ratio ${r.view.failure_ratio.toFixed(2)} over the threshold 0.20`;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  let raw = '';
  for await (const chunk of req) raw += (chunk as Buffer).toString();
  const body = raw ? JSON.parse(raw) as Record<string, unknown> : undefined;
  seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body });
  if (req.headers.authorization !== `Bearer ${TOKEN}`) return error(res, 401, 'AUTH_REQUIRED', 'a bearer token is required');
  if (req.method === 'POST' && req.url === '/v1/rollouts') {
    const b = body as { firmware: string; selector: Record<string, unknown>; waves?: Array<{ percent: number; hold_s: number }> };
    if (b.firmware !== SHA) return error(res, 404, 'FIRMWARE_NOT_FOUND', `no image with sha256 ${b.firmware}`);
    const id = `ro-${nextId++}`;
    const r: Rollout = {
      script: SCRIPTS[b.selector.tag === 'flaky' ? 'failing' : 'clean']!, step: 0,
      view: {
        id, state: 'running', firmware: { sha256: SHA, version: '1.4.0', chip: 'esp32' }, selector: b.selector,
        waves: (b.waves ?? [{ percent: 100, hold_s: 0 }]).map((w) => ({ ...w, devices: Math.round(w.percent / 5), started_at: null })), current_wave: 0,
        counts: counts({}), counts_by_wave: [], failure_ratio: 0, abort_reason: null, created_at: 1, updated_at: 1, actor: 'user:op',
      },
    };
    apply(r);
    rollouts.set(id, r);
    return send(res, 201, r.view);
  }
  const m = /^\/v1\/rollouts\/([^/]+)(?:\/(pause|resume|cancel))?$/.exec(req.url!);
  const r = m ? rollouts.get(decodeURIComponent(m[1]!)) : undefined;
  if (!m || !r) return error(res, 404, 'NOT_FOUND', `no rollout ${m?.[1] ?? req.url}`);
  const action = m[2];
  if (req.method === 'GET' && !action) {
    if (r.view.state === 'running') { r.step++; apply(r); }
    return send(res, 200, r.view);
  }
  if (req.method !== 'POST' || !action) return error(res, 405, 'METHOD_NOT_ALLOWED', `${req.method} ${req.url}`);
  const from: Record<string, string[]> = { pause: ['running'], resume: ['paused'], cancel: ['running', 'paused'] };
  if (!from[action]!.includes(r.view.state)) {
    return error(res, 409, 'ROLLOUT_STATE', `rollout ${r.view.id} is ${r.view.state}; only a ${from[action]!.join(' or ')} rollout can be ${action === 'cancel' ? 'cancelled' : `${action}d`}`);
  }
  r.view.state = action === 'pause' ? 'paused' : action === 'resume' ? 'running' : 'cancelled';
  return send(res, 200, r.view);
}

beforeAll(async () => {
  server = createServer((req, res) => void handle(req, res).catch((err: Error) => error(res, 500, 'INTERNAL', err.message)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
beforeEach(() => { seen = []; });

interface Run { code: number | null; stdout: string; stderr: string }

/** `terminal`: under script(1), so the CLI's stdout is a TTY as in an operator's shell. */
function cli(args: string[], opts: { terminal?: boolean; env?: Record<string, string> } = {}): Promise<Run> {
  const argv = [process.execPath, CLI, 'rollouts', ...args];
  const [file, fileArgs] = opts.terminal ? ['script', ['-qec', argv.map((a) => `'${a}'`).join(' '), '/dev/null']] : [argv[0]!, argv.slice(1)];
  return new Promise((resolve) => {
    const child = spawn(file, fileArgs, { env: { PATH: process.env.PATH, FLEETWIRE_URL: url, FLEETWIRE_TOKEN: TOKEN, LOG_LEVEL: 'warn', ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const CREATE = ['create', '--firmware', SHA, '--type', 'sensor', '--waves', '10:60,50:60,100:0', '--rate-per-min', '120', '--jitter-s', '30',
  '--failure-ratio', '0.2', '--min-sample', '5', '--confirm-window-s', '300'];

async function created(args = CREATE): Promise<string> {
  const run = await cli(args);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  return run.stdout.split('\n')[0]!;
}

describe('fleetwire rollouts create', () => {
  it('sends the rollout as the API takes it and prints its id, a summary and the view', async () => {
    const run = await cli([...CREATE, '--allow-downgrade']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(seen).toEqual([{
      method: 'POST', url: '/v1/rollouts', auth: `Bearer ${TOKEN}`,
      body: {
        firmware: SHA, selector: { type: 'sensor' }, waves: [{ percent: 10, hold_s: 60 }, { percent: 50, hold_s: 60 }, { percent: 100, hold_s: 0 }],
        rate_per_min: 120, jitter_s: 30, failure_threshold: { ratio: 0.2, min_sample: 5 }, confirm_window_s: 300, allow_downgrade: true,
      },
    }]);
    const [id, line, ...json] = run.stdout.trimEnd().split('\n');
    expect(id).toMatch(/^ro-\d+$/);
    expect(line).toBe(`rollout ${id}: running, firmware 1.4.0 (${SHA.slice(0, 12)}…, esp32), 20 devices (2 skipped), wave 1/3 (10%): ` +
      `succeeded 0, in progress 2, pending 16; follow it: fleetwire rollouts watch ${id}`);
    expect(JSON.parse(json.join('\n'))).toMatchObject({ id, state: 'running', selector: { type: 'sensor' } });
  });

  it('maps each selector flag, sends allow_downgrade false by default and the SHA-256 in lower case', async () => {
    const base = CREATE.filter((a, i) => a !== '--type' && CREATE[i - 1] !== '--type');
    const cases: Array<[string[], Record<string, unknown>]> = [
      [['--ids', 'dev-1, dev-2,,dev-3'], { ids: ['dev-1', 'dev-2', 'dev-3'] }],
      [['--tag', 'greenhouse'], { tag: 'greenhouse' }],
      [['--firmware-of', '1.3.0'], { firmware: '1.3.0' }],
    ];
    for (const [flags, selector] of cases) {
      seen = [];
      await created([...base.map((a) => (a === SHA ? SHA.toUpperCase() : a)), ...flags]);
      expect(seen[0]!.body).toMatchObject({ firmware: SHA, selector, allow_downgrade: false });
    }
  });

  it('leaves the flags not given out of the request, so the server\'s defaults apply', async () => {
    await created(['create', '--firmware', SHA, '--ids', 'a-1,b-2']);
    expect(seen.at(-1)!.body).toEqual({ firmware: SHA, selector: { ids: ['a-1', 'b-2'] }, allow_downgrade: false });
  });

  it('refuses a malformed command line with what is wrong, exit 2, and sends nothing', async () => {
    const without = (flag: string): string[] => CREATE.filter((a, i) => a !== flag && CREATE[i - 1] !== flag);
    const replace = (flag: string, value: string): string[] => CREATE.map((a, i) => (CREATE[i - 1] === flag ? value : a));
    const cases: Array<[string[], string]> = [
      [without('--firmware'), '--firmware is required'],
      [replace('--firmware', 'abc123'), '--firmware takes the image\'s SHA-256 (64 hex digits'],
      [without('--type'), 'give exactly one of --ids, --type, --tag, --firmware-of'],
      [[...CREATE, '--tag', 'greenhouse'], 'give exactly one of --ids, --type, --tag, --firmware-of'],
      [[...without('--type'), '--ids', ' , '], '--ids takes device ids separated by commas'],
      [replace('--waves', '10-60'), '--waves: "10-60" is not PERCENT:HOLD_S'],
      [replace('--waves', '50:60,10:60,100:0'), '--waves: each wave\'s percent is cumulative and must be more than the one before (50 then 10)'],
      [replace('--waves', '10:60,150:0'), '--waves: a wave\'s percent is over 0 and at most 100, not 150'],
      [replace('--waves', '0:60,100:0'), '--waves: a wave\'s percent is over 0 and at most 100, not 0'],
      [replace('--rate-per-min', '0'), '--rate-per-min takes a whole number ≥ 1, not "0"'],
      [replace('--rate-per-min', 'fast'), '--rate-per-min takes a whole number ≥ 1, not "fast"'],
      [replace('--jitter-s', '1.5'), '--jitter-s takes a whole number ≥ 0, not "1.5"'],
      [replace('--jitter-s', '-1'), 'Option \'--jitter-s\' argument is ambiguous'], // parseArgs: a value starting with a dash
      [replace('--failure-ratio', '1.5'), '--failure-ratio takes a number from 0 to 1'],
      [without('--min-sample'), '--min-sample is required'], // the threshold goes whole: with --failure-ratio
      [replace('--confirm-window-s', '2.5'), '--confirm-window-s takes a whole number ≥ 1, not "2.5"'],
      [[...CREATE, '--wave', '10:60'], 'Unknown option \'--wave\''],
    ];
    for (const [args, message] of cases) {
      const run = await cli(args);
      expect(run.code, args.join(' ')).toBe(2);
      expect(run.stderr, args.join(' ')).toContain(`fleetwire: ${message}`);
      expect(run.stderr).toContain('usage: fleetwire rollouts create --firmware SHA256');
      expect(run.stdout).toBe('');
    }
    const noToken = await cli(CREATE, { env: { FLEETWIRE_TOKEN: '' } });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('set FLEETWIRE_TOKEN to an admin or operator access token');
    expect(seen).toEqual([]);
  }, 60_000); // about 20 CLI processes, one after another

  it('shows what the server refused, with its status, and exits 1', async () => {
    const run = await cli(CREATE.map((a) => (a === SHA ? 'cd'.repeat(32) : a)));
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(`fleetwire: cannot create the rollout: HTTP 404 FIRMWARE_NOT_FOUND: no image with sha256 ${'cd'.repeat(32)}\n`);
    const unreachable = await cli(CREATE, { env: { FLEETWIRE_URL: 'http://127.0.0.1:9' } });
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toContain('cannot reach http://127.0.0.1:9');
  });
});

describe('fleetwire rollouts watch', () => {
  it('writes a line per change until the rollout completed, and exits 0 when every offered device succeeded', async () => {
    const id = await created();
    const run = await cli(['watch', id]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const lines = run.stdout.trimEnd().split('\n');
    expect(new Set(lines).size).toBe(lines.length); // a line per change, never the same twice
    expect(lines[0]).toBe('running wave 1/3 (10%) succeeded 0 failed 0 refused 0 rolled_back 0 timed_out 0 in_progress 2 pending 16 skipped 2 failure_ratio 0.00');
    expect(lines).toContain('running wave 2/3 (50%) succeeded 2 failed 0 refused 0 rolled_back 0 timed_out 0 in_progress 7 pending 9 skipped 2 failure_ratio 0.00');
    expect(lines.at(-2)).toBe('completed wave 3/3 (100%) succeeded 18 failed 0 refused 0 rolled_back 0 timed_out 0 in_progress 0 pending 0 skipped 2 failure_ratio 0.00');
    expect(lines.at(-1)).toBe(`completed: 18 succeeded, 2 skipped; the devices in each state: GET /v1/rollouts/${id}`);
    expect(seen.filter((s) => s.method === 'GET').length).toBe(SCRIPTS.clean!.length - 1); // stops polling once it ended
  });

  it('exits 1 when the rollout aborted itself, saying why and how many devices failed', async () => {
    const id = await created(CREATE.map((a) => (a === 'sensor' ? 'flaky' : a)).map((a) => (a === '--type' ? '--tag' : a)));
    const run = await cli(['watch', id]);
    expect(run.code).toBe(1);
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines.at(-2)).toBe('aborted wave 2/3 (50%) succeeded 4 failed 1 refused 0 rolled_back 4 timed_out 1 in_progress 0 pending 10 skipped 0 failure_ratio 0.60');
    expect(lines.at(-1)).toBe('aborted (failure ratio 0.60 over the threshold 0.20): succeeded 4, failed 1, refused 0, rolled back 4, timed out 1, ' +
      `skipped 0, not offered 10; the devices in each state: GET /v1/rollouts/${id}`);
  });

  it('redraws a bar per state on a terminal, in place', async () => {
    const id = await created();
    const run = await cli(['watch', id], { terminal: true });
    expect(run.code).toBe(0);
    const redraw = '\r\x1b[2K';
    const erased = (l: string): string => l.split('\x1b[2K').join('').replace(/^\r/, ''); // a line without its erase
    const up = '\x1b[8A'; // the heading and 8 bars: back up 8 lines to draw over them
    const drawings = run.stdout.split(up);
    expect(drawings).toHaveLength(SCRIPTS.clean!.length - 1); // one drawing per change, the first not preceded by a move
    for (const d of drawings) expect(d.startsWith(redraw)).toBe(true);
    // The terminal turns each \n into \r\n; the last drawing, then the outcome on a line of its own.
    const last = drawings.at(-1)!.split('\r\n').map(erased);
    expect(last).toEqual([
      `rollout ${id} completed, wave 3/3 (100%), failure ratio 0.00`,
      '  succeeded   [##################--] 18/20',
      '  failed      [--------------------]  0/20',
      '  refused     [--------------------]  0/20',
      '  rolled back [--------------------]  0/20',
      '  timed out   [--------------------]  0/20',
      '  in progress [--------------------]  0/20',
      '  pending     [--------------------]  0/20',
      '  skipped     [##------------------]  2/20',
      `completed: 18 succeeded, 2 skipped; the devices in each state: GET /v1/rollouts/${id}`,
      '',
    ]);
    const first = drawings[0]!.split('\r\n').map(erased);
    expect(first[0]).toBe(`rollout ${id} running, wave 1/3 (10%), failure ratio 0.00`);
    expect(first[6]).toBe('  in progress [##------------------]  2/20');
  });

  it('says so when there is no such rollout, exits 1; without an id exits 2', async () => {
    const missing = await cli(['watch', 'ro-nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('fleetwire: cannot read rollout ro-nope: HTTP 404 NOT_FOUND: no rollout ro-nope\n');
    const none = await cli(['watch']);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('fleetwire: give the rollout id');
    const two = await cli(['watch', 'a', 'b']);
    expect(two.code).toBe(2);
  });
});

describe('fleetwire rollouts pause|resume|cancel', () => {
  it('posts the action and prints the rollout in its new state; a watch follows a paused rollout until it ends', async () => {
    const id = await created();
    seen = [];
    const paused = await cli(['pause', id]);
    expect(paused.stderr).toBe('');
    expect(paused.code).toBe(0);
    expect(paused.stdout).toMatch(new RegExp(`^paused rollout ${id}: paused, firmware 1\\.4\\.0 .*wave 1/3 \\(10%\\)`));

    // While paused the counts do not move: the watch waits; resumed, it follows the rollout to its end.
    const watching = cli(['watch', id]);
    const deadline = Date.now() + 5000;
    while (seen.filter((s) => s.method === 'GET').length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const resumed = await cli(['resume', id]);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(new RegExp(`^resumed rollout ${id}: running`));
    const run = await watching;
    expect(run.code).toBe(0);
    expect(run.stdout.split('\n')[0]).toMatch(/^paused wave 1\/3 \(10%\) /);
    expect(run.stdout).toContain('\nrunning wave 1/3');
    expect(run.stdout).toContain('\ncompleted: 18 succeeded');

    expect(seen.filter((s) => s.method === 'POST')).toEqual([
      { method: 'POST', url: `/v1/rollouts/${id}/pause`, auth: `Bearer ${TOKEN}`, body: undefined },
      { method: 'POST', url: `/v1/rollouts/${id}/resume`, auth: `Bearer ${TOKEN}`, body: undefined },
    ]);
  });

  it('shows a 409 as the server said it, and exits 1', async () => {
    const id = await created();
    const resume = await cli(['resume', id]);
    expect(resume.code).toBe(1);
    expect(resume.stdout).toBe('');
    expect(resume.stderr).toBe(`fleetwire: cannot resume rollout ${id}: HTTP 409 ROLLOUT_STATE: rollout ${id} is running; only a paused rollout can be resumed\n`);

    const cancelled = await cli(['cancel', id]);
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout).toMatch(new RegExp(`^cancelled rollout ${id}: cancelled`));
    const again = await cli(['pause', id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`fleetwire: cannot pause rollout ${id}: HTTP 409 ROLLOUT_STATE: rollout ${id} is cancelled; only a running rollout can be paused\n`);
    const watch = await cli(['watch', id]);
    expect(watch.code).toBe(1); // cancelled is not completed
    expect(watch.stdout).toContain('cancelled: succeeded 0');

    const noId = await cli(['cancel']);
    expect(noId.code).toBe(2);
    expect(noId.stderr).toContain('usage: fleetwire rollouts cancel ID');
  });
});
