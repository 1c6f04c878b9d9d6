/**
 * `fleetwire rollouts create|watch|pause|resume|cancel`: OTA rollouts from the shell,
 * against a running server over its HTTP API (/v1/rollouts; FLEETWIRE_URL,
 * FLEETWIRE_TOKEN). `watch` shows a progress bar per device state until the rollout
 * ended: exit status 0 when it completed with no device failed, refused, rolled back or
 * timed out, 1 otherwise. A command line that is refused exits 2.
 */
import { parseArgs } from 'node:util';
import type { ServiceCommand } from '@fleetwire/common';
import { Api, ApiError, bar, LiveView, UsageError, withUsage } from './cli-http.js';

const TOKEN_HINT = 'an admin or operator access token (POST /v1/auth/login), or a service token (fleetwire token service <name>)';
const ENV_LINE = `FLEETWIRE_URL (default http://127.0.0.1:8080),\n${' '.repeat(34)}FLEETWIRE_TOKEN (an admin or operator access token)`;
const INDENT = ' '.repeat(34);

const CREATE_USAGE = `fleetwire rollouts create --firmware SHA256 (--ids a,b | --type T | --tag T | --firmware-of V)
      [--waves PCT:HOLD_S,…] [--rate-per-min N] [--jitter-s N] [--failure-ratio R --min-sample N]
      [--confirm-window-s N] [--allow-downgrade]
${INDENT}roll an uploaded image out to the selected devices in waves (e.g. --waves 10:600,50:600,100:0:
${INDENT}10% held 600 s, then 50%, then all), aborting itself when the failure ratio (failed, rolled back,
${INDENT}timed out over finished, once --min-sample finished) exceeds --failure-ratio; prints the rollout
${INDENT}id and its view (JSON). Left out, the server's defaults apply (one wave of 100%, 60 offers a
${INDENT}minute, no jitter, ratio 0.2 after 5, a 600 s confirm window). ${ENV_LINE}; the same for watch,
${INDENT}pause, resume, cancel`;
const WATCH_USAGE = `fleetwire rollouts watch ID
${INDENT}show a rollout's progress (a bar per device state, its wave, its failure ratio) until it
${INDENT}completed, aborted or was cancelled; exits 0 when it completed with no device failed, refused,
${INDENT}rolled back or timed out, 1 otherwise`;
const actionUsage = (action: string, what: string): string => `fleetwire rollouts ${action} ID\n${INDENT}${what}`;

type DeviceState = 'pending' | 'skipped' | 'offered' | 'downloading' | 'verifying' | 'rebooting' | 'succeeded' | 'failed' | 'refused' | 'rolled_back' | 'timed_out';
type Counts = Record<DeviceState, number>;

/** GET /v1/rollouts/{id}. */
export interface RolloutView {
  id: string;
  state: 'running' | 'paused' | 'completed' | 'aborted' | 'cancelled';
  firmware: { sha256: string; version: string; chip?: string | null };
  selector: Record<string, unknown>;
  waves: Array<{ percent: number; hold_s: number; devices: number; started_at: number | string | null }>;
  current_wave: number | null;
  counts: Counts;
  counts_by_wave: Counts[];
  failure_ratio: number | null;
  abort_reason: string | null;
  created_at: number | string;
  updated_at: number | string;
  actor: string;
}

const ENDED = new Set(['completed', 'aborted', 'cancelled']);
const POLL_MS = 500;

// ---- create -------------------------------------------------------------------------

function required(values: Record<string, string | boolean | undefined>, flag: string): string {
  const v = values[flag];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${flag} is required`);
  return v;
}

function integer(flag: string, raw: string, min: number): number {
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < min) throw new UsageError(`--${flag} takes a whole number ≥ ${min}, not "${raw}"`);
  return n;
}

/** `10:60,50:60,100:0` → [{percent: 10, hold_s: 60}, …]: percents rising, up to 100. */
export function parseWaves(raw: string): Array<{ percent: number; hold_s: number }> {
  const example = 'e.g. --waves 10:600,50:600,100:0 (percent of the selected devices:seconds to hold before the next wave)';
  const waves = raw.split(',').map((part) => {
    const m = /^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+)\s*$/.exec(part);
    if (!m) throw new UsageError(`--waves: "${part}" is not PERCENT:HOLD_S; ${example}`);
    const percent = Number(m[1]);
    if (percent <= 0 || percent > 100) throw new UsageError(`--waves: a wave's percent is over 0 and at most 100, not ${m[1]}`);
    return { percent, hold_s: Number(m[2]) };
  });
  for (let i = 1; i < waves.length; i++) {
    if (waves[i]!.percent <= waves[i - 1]!.percent) {
      throw new UsageError(`--waves: each wave's percent is cumulative and must be more than the one before (${waves[i - 1]!.percent} then ${waves[i]!.percent})`);
    }
  }
  return waves;
}

function selectorOf(v: { ids?: string; type?: string; tag?: string; 'firmware-of'?: string }): Record<string, unknown> {
  const given = (['ids', 'type', 'tag', 'firmware-of'] as const).filter((k) => v[k] !== undefined);
  if (given.length !== 1) throw new UsageError('give exactly one of --ids, --type, --tag, --firmware-of');
  const kind = given[0]!;
  const value = v[kind]!.trim();
  if (kind === 'ids') {
    const ids = value.split(',').map((s) => s.trim()).filter(Boolean);
    if (ids.length === 0) throw new UsageError('--ids takes device ids separated by commas');
    return { ids };
  }
  if (value === '') throw new UsageError(`--${kind} takes a value`);
  return { [kind === 'firmware-of' ? 'firmware' : kind]: value };
}

/** The POST /v1/rollouts body from the command line; throws UsageError naming the flag. */
export function createBody(argv: string[]): Record<string, unknown> {
  const { values } = parseArgs({
    args: argv,
    options: {
      firmware: { type: 'string' }, ids: { type: 'string' }, type: { type: 'string' }, tag: { type: 'string' }, 'firmware-of': { type: 'string' },
      waves: { type: 'string' }, 'rate-per-min': { type: 'string' }, 'jitter-s': { type: 'string' }, 'failure-ratio': { type: 'string' },
      'min-sample': { type: 'string' }, 'confirm-window-s': { type: 'string' }, 'allow-downgrade': { type: 'boolean', default: false },
    },
  });
  const firmware = required(values, 'firmware');
  if (!/^[0-9a-fA-F]{64}$/.test(firmware)) {
    throw new UsageError(`--firmware takes the image's SHA-256 (64 hex digits, as \`fleetwire firmware upload\` prints), not "${firmware}"`);
  }
  const selector = selectorOf(values);
  // Flags left out are left out of the body: the server applies its defaults.
  const flags = values as Record<string, string | boolean | undefined>;
  const given = (flag: string): string | undefined => (typeof flags[flag] === 'string' ? flags[flag] as string : undefined);
  const body: Record<string, unknown> = { firmware: firmware.toLowerCase(), selector, allow_downgrade: values['allow-downgrade'] === true };
  if (given('waves') !== undefined) body.waves = parseWaves(given('waves')!);
  if (given('rate-per-min') !== undefined) body.rate_per_min = integer('rate-per-min', given('rate-per-min')!, 1);
  if (given('jitter-s') !== undefined) body.jitter_s = integer('jitter-s', given('jitter-s')!, 0);
  if (given('confirm-window-s') !== undefined) body.confirm_window_s = integer('confirm-window-s', given('confirm-window-s')!, 1);
  if (given('failure-ratio') !== undefined || given('min-sample') !== undefined) {
    // The server takes the threshold whole: both or neither.
    const ratioRaw = required(values, 'failure-ratio');
    const ratio = Number(ratioRaw);
    if (ratioRaw.trim() === '' || !Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
      throw new UsageError(`--failure-ratio takes a number from 0 to 1 (0.1: abort when over 10% of finished devices failed), not "${ratioRaw}"`);
    }
    body.failure_threshold = { ratio, min_sample: integer('min-sample', required(values, 'min-sample'), 1) };
  }
  return body;
}

// ---- what a view looks like -----------------------------------------------------------

const total = (c: Counts): number => Object.values(c).reduce((a, b) => a + (b ?? 0), 0);
const inProgress = (c: Counts): number => c.offered + c.downloading + c.verifying + c.rebooting;
const notSucceeded = (c: Counts): number => c.failed + c.refused + c.rolled_back + c.timed_out;

/** `wave 2/3 (50%)`, from the waves started so far; `wave 0/3 (not started)` before the first. */
function waveText(v: RolloutView): string {
  const started = v.waves.filter((w) => w.started_at !== null).length;
  const percent = started > 0 ? `${v.waves[started - 1]!.percent}%` : 'not started';
  return `wave ${started}/${v.waves.length} (${percent})`;
}

const ratioText = (r: number | null): string => (r === null || r === undefined ? '-' : r.toFixed(2));

/** The bars, in this order; `in progress` is offered + downloading + verifying + rebooting. */
const ROWS: ReadonlyArray<[label: string, log: string, count: (c: Counts) => number]> = [
  ['succeeded', 'succeeded', (c) => c.succeeded],
  ['failed', 'failed', (c) => c.failed],
  ['refused', 'refused', (c) => c.refused],
  ['rolled back', 'rolled_back', (c) => c.rolled_back],
  ['timed out', 'timed_out', (c) => c.timed_out],
  ['in progress', 'in_progress', inProgress],
  ['pending', 'pending', (c) => c.pending],
  ['skipped', 'skipped', (c) => c.skipped],
];

/** The terminal drawing: a heading, then a bar per state over every device of the rollout. */
export function watchLines(v: RolloutView): string[] {
  const n = total(v.counts);
  const width = String(n).length;
  const head = `rollout ${v.id} ${v.state}, ${waveText(v)}, failure ratio ${ratioText(v.failure_ratio)}` +
    (v.abort_reason ? `, aborted: ${v.abort_reason}` : '');
  return [head, ...ROWS.map(([label, , count]) => `  ${label.padEnd(11)} ${bar(count(v.counts), n)} ${String(count(v.counts)).padStart(width)}/${n}`)];
}

/** The same on one line, for a log or a pipe. */
export function watchLogLine(v: RolloutView): string {
  return `${v.state} ${waveText(v)} ${ROWS.map(([, log, count]) => `${log} ${count(v.counts)}`).join(' ')} failure_ratio ${ratioText(v.failure_ratio)}`;
}

function summary(v: RolloutView): string {
  const c = v.counts;
  return `rollout ${v.id}: ${v.state}, firmware ${v.firmware.version} (${v.firmware.sha256.slice(0, 12)}…${v.firmware.chip ? `, ${v.firmware.chip}` : ''}), ` +
    `${total(c)} devices (${c.skipped} skipped), ${waveText(v)}: succeeded ${c.succeeded}, in progress ${inProgress(c)}, pending ${c.pending}`;
}

// ---- the commands ---------------------------------------------------------------------

function oneId(argv: string[]): string {
  const { positionals } = parseArgs({ args: argv, options: {}, allowPositionals: true });
  if (positionals.length !== 1 || positionals[0]!.trim() === '') throw new UsageError('give the rollout id (fleetwire rollouts create prints it)');
  return positionals[0]!;
}

const rolloutPath = (id: string): string => `/v1/rollouts/${encodeURIComponent(id)}`;

/** An error answer said plainly: what was asked, the status, and the server's code and message. */
function refused(what: string, err: unknown): never {
  if (!(err instanceof ApiError)) throw err;
  throw new Error(`cannot ${what}: HTTP ${err.status}${err.code !== undefined ? ` ${err.code}: ${err.detail ?? ''}` : ''}`);
}

const create: ServiceCommand = {
  name: 'rollouts create',
  usage: CREATE_USAGE,
  run: (argv, env) => withUsage(CREATE_USAGE, async () => {
    const body = createBody(argv);
    const api = Api.fromEnv(env, TOKEN_HINT);
    const view = await api.call<RolloutView>('POST', '/v1/rollouts', body).catch((err: unknown) => refused('create the rollout', err));
    process.stdout.write(`${view.id}\n${summary(view)}; follow it: fleetwire rollouts watch ${view.id}\n${JSON.stringify(view, null, 2)}\n`);
    return 0;
  }),
};

const watch: ServiceCommand = {
  name: 'rollouts watch',
  usage: WATCH_USAGE,
  run: (argv, env) => withUsage(WATCH_USAGE, async () => {
    const id = oneId(argv);
    const api = Api.fromEnv(env, TOKEN_HINT);
    // On a terminal the bars are redrawn in place; otherwise (a log, a pipe) a line per change.
    const live = new LiveView(process.stdout);
    let v: RolloutView;
    for (;;) {
      v = await api.call<RolloutView>('GET', rolloutPath(id)).catch((err: unknown) => refused(`read rollout ${id}`, err));
      live.update(watchLines(v), watchLogLine(v));
      if (ENDED.has(v.state)) break;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    live.end();
    const c = v.counts;
    const clean = v.state === 'completed' && notSucceeded(c) === 0;
    const outcome = clean ? `completed: ${c.succeeded} succeeded, ${c.skipped} skipped`
      : `${v.state}${v.abort_reason ? ` (${v.abort_reason})` : ''}: succeeded ${c.succeeded}, failed ${c.failed}, refused ${c.refused}, ` +
        `rolled back ${c.rolled_back}, timed out ${c.timed_out}, skipped ${c.skipped}, not offered ${c.pending}`;
    process.stdout.write(`${outcome}; the devices in each state: GET ${rolloutPath(v.id)}\n`);
    return clean ? 0 : 1;
  }),
};

function action(name: 'pause' | 'resume' | 'cancel', past: string, what: string): ServiceCommand {
  const usage = actionUsage(name, what);
  return {
    name: `rollouts ${name}`,
    usage,
    run: (argv, env) => withUsage(usage, async () => {
      const id = oneId(argv);
      const api = Api.fromEnv(env, TOKEN_HINT);
      const v = await api.call<RolloutView>('POST', `${rolloutPath(id)}/${name}`).catch((err: unknown) => refused(`${name} rollout ${id}`, err));
      process.stdout.write(`${past} ${summary(v)}\n`);
      return 0;
    }),
  };
}

export const rolloutCommands: readonly ServiceCommand[] = [
  create,
  watch,
  action('pause', 'paused', 'stop offering the image (devices already updating finish); the wave timer stops'),
  action('resume', 'resumed', 'go on with a paused rollout from where it stopped'),
  action('cancel', 'cancelled', 'end the rollout for good: no more offers (devices already updating finish)'),
];
