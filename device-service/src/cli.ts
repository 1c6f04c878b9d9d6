/**
 * `fleetwire devices command`: a fleet command from the shell, against a running server
 * over its HTTP API (FLEETWIRE_URL, FLEETWIRE_TOKEN), with its progress until every
 * command ended. Exit status 0 when every command succeeded, 1 otherwise.
 */
import { parseArgs } from 'node:util';
import type { ServiceCommand } from '@fleetwire/common';
import { Api, bar, LiveView } from './cli-http.js';

const USAGE = `fleetwire devices command --name N [--args JSON] (--ids a,b | --type T | --tag T | --firmware V)
      [--timeout-ms N] [--rate N]
                                  send a fleet command through the running server and show its progress until
                                  every command ended (offline devices: until theirs expires); exits 0 when all
                                  succeeded. FLEETWIRE_URL (default http://127.0.0.1:8080), FLEETWIRE_TOKEN (an
                                  admin or operator access token, or a service token)`;

const POLL_MS = 500;

interface Progress {
  batch: string;
  total: number;
  dispatched: number;
  counts: Record<'sent' | 'delivered' | 'succeeded' | 'failed' | 'expired' | 'timed_out', number>;
  done: boolean;
}

/** `[#####-----] 12/20 succeeded 10 failed 1 …`: ended commands over the total. */
export function progressLine(p: Progress): string {
  const c = p.counts;
  const ended = c.succeeded + c.failed + c.expired + c.timed_out;
  const waiting = p.dispatched < p.total ? ` not sent yet ${p.total - p.dispatched}` : '';
  return `${bar(ended, p.total)} ${ended}/${p.total} succeeded ${c.succeeded} failed ${c.failed} ` +
    `expired ${c.expired} timed_out ${c.timed_out} sent ${c.sent} delivered ${c.delivered}${waiting}`;
}

function selectorOf(v: { ids?: string; type?: string; tag?: string; firmware?: string }): Record<string, unknown> {
  const given = (['ids', 'type', 'tag', 'firmware'] as const).filter((k) => v[k] !== undefined);
  if (given.length !== 1) throw new Error(`give exactly one of --ids, --type, --tag, --firmware\nusage: ${USAGE}`);
  const kind = given[0]!;
  return kind === 'ids' ? { ids: v.ids!.split(',').map((s) => s.trim()).filter(Boolean) } : { [kind]: v[kind] };
}

function wholeNumber(flag: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} takes a whole number ≥ 1`);
  return n;
}

const command: ServiceCommand = {
  name: 'devices command',
  usage: USAGE,
  async run(argv, env) {
    const { values } = parseArgs({
      args: argv,
      options: {
        name: { type: 'string' }, args: { type: 'string' }, ids: { type: 'string' }, type: { type: 'string' }, tag: { type: 'string' },
        firmware: { type: 'string' }, 'timeout-ms': { type: 'string' }, rate: { type: 'string' },
      },
    });
    if (!values.name) throw new Error(`--name is required\nusage: ${USAGE}`);
    let args: unknown = {};
    if (values.args !== undefined) {
      try {
        args = JSON.parse(values.args);
      } catch {
        throw new Error('--args takes a JSON object, e.g. --args \'{"seconds":30}\'');
      }
    }
    const token = env.FLEETWIRE_TOKEN;
    if (!token) throw new Error('set FLEETWIRE_TOKEN to an admin or operator access token (POST /v1/auth/login), or a service token (fleetwire token service <name>)');
    const api = new Api(env.FLEETWIRE_URL || 'http://127.0.0.1:8080', token);
    const body = {
      selector: selectorOf(values), name: values.name, args,
      ...(values['timeout-ms'] !== undefined ? { timeout_ms: wholeNumber('--timeout-ms', values['timeout-ms']) } : {}),
      ...(values.rate !== undefined ? { rate_per_s: wholeNumber('--rate', values.rate) } : {}),
    };
    const created = await api.call<{ batch: string; total: number; skipped: number }>('POST', '/v1/commands', body);
    const out = process.stdout;
    out.write(`fleet command ${created.batch}: ${values.name} to ${created.total} devices${created.skipped ? ` (${created.skipped} revoked skipped)` : ''}\n`);

    // On a terminal one line redrawn in place; otherwise (a log, a pipe) a line per change.
    const view = new LiveView(out);
    let progress: Progress;
    for (;;) {
      progress = await api.call<Progress>('GET', `/v1/commands/batches/${created.batch}`);
      view.update([progressLine(progress)]);
      if (progress.done) break;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    view.end();
    const c = progress.counts;
    const allSucceeded = c.succeeded === progress.total;
    out.write(`${allSucceeded ? 'all succeeded' : `not all succeeded: failed ${c.failed}, expired ${c.expired}, timed_out ${c.timed_out}`}; ` +
      `each command: GET /v1/commands/${created.batch}:<index>\n`);
    return allSucceeded ? 0 : 1;
  },
};

export const deviceCommands: readonly ServiceCommand[] = [command];
