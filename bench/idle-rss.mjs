// Memory per idle authenticated connection.
//   node bench/idle-rss.mjs [--n 10000] [--per-ip 500] [--concurrency 200]
// Opens N WebSocket MQTT connections (Fleetwire: N distinct registered devices,
// each with its own JWT), keepalive 1200 s, and leaves them idle. Node brokers
// run with --inspect on loopback so the harness can force a full GC through the
// inspector (HeapProfiler.collectGarbage) before each RSS reading; mosquitto's
// RSS is read after settling. Reports (RSS_after - RSS_before) / N.
// Source addresses are 127.4.x.y, --per-ip connections each, so neither
// ephemeral ports nor per-IP limits run out. The script raises its own
// RLIMIT_NOFILE (and so the broker's, which inherits it) with prlimit; if the
// hard limit is too low it says so (raising it needs root / CAP_SYS_RESOURCE,
// e.g. run under `prlimit --nofile=250000:250000 node bench/idle-rss.mjs --n 100000`).
import { parseArgs, usage, printTable, log, sleep, procMem, fmt, raiseFileLimit } from './lib/util.mjs';
import { runAcross, setupProcess, hardDeadline } from './lib/runner.mjs';
import { MqttConn, loopbackAddress } from './lib/conn.mjs';
import { openInspector } from './lib/inspector.mjs';

const D = { targets: 'all', n: 10000, perIp: 500, concurrency: 200, settle: 5, keepalive: 1200, maxOpenSeconds: 120 };
const a = parseArgs(D);
if (a.help) { console.log(usage('idle-rss', 'broker RSS per idle authenticated WS connection', D)); process.exit(0); }
setupProcess();
hardDeadline(120 + 3 * (a.maxOpenSeconds + 4 * a.settle + 60));

// ---- file descriptors: this process and the broker (inherits) each need ~N
const need = a.n + 2000;
const lim = raiseFileLimit(need);
log(`RLIMIT_NOFILE now ${lim.soft} (hard ${lim.hard}), need ${need}`);
if (lim.soft < need) {
  console.error(`idle-rss: --n ${a.n} needs ${need} file descriptors but the limit is ${lim.soft} (hard ${lim.hard}) and cannot be raised here.\n` +
    `Use a smaller --n (max about ${lim.soft - 2000}) or run as root with a higher hard limit, e.g.\n` +
    `  prlimit --nofile=${need}:${need} node bench/idle-rss.mjs --n ${a.n}`);
  process.exit(2);
}

const ids = Array.from({ length: a.n }, (_, i) => `idle-${String(i).padStart(6, '0')}`);
const rows = await runAcross(a, 'idle-rss', async (t) => {
  const node = t.name !== 'mosquitto';
  log(`${t.name}: preparing ${a.n} identities`);
  await t.registerDevices(ids);
  const specs = [];
  for (const id of ids) specs.push(await t.clientOpts({ kind: 'device', id }, 'ws'));
  const insp = node ? await openInspector(t.inspectPort) : null;
  const reading = async () => {
    if (insp) await insp.gc();
    await sleep(300);
    const m = procMem(t.pid);
    const heap = insp ? await insp.heapUsed() : null;
    return { rss: m.rss, heapUsed: heap?.heapUsed, external: heap ? heap.external + (heap.arrayBuffers ?? 0) : undefined };
  };
  await sleep(a.settle * 1000);
  const before = await reading();
  log(`${t.name}: before RSS ${(before.rss / 1048576).toFixed(1)} MB; opening ${a.n} connections`);
  const conns = new Array(a.n);
  const errors = new Map();
  let next = 0; let ok = 0; let lastLog = performance.now();
  const t0 = performance.now();
  const deadline = t0 + a.maxOpenSeconds * 1000;
  async function worker() {
    while (next < a.n && performance.now() < deadline) {
      const i = next++;
      const c = new MqttConn({ ...specs[i], keepalive: a.keepalive, localAddress: loopbackAddress(Math.floor(i / a.perIp), 4), timeoutMs: 20000 });
      try { await c.connect(); conns[i] = c; ok++; } catch (err) {
        const k = err.message.replace(/\d{4,}/g, 'N'); errors.set(k, (errors.get(k) ?? 0) + 1);
      }
      if (performance.now() - lastLog > 5000) { lastLog = performance.now(); log(`${t.name}: ${ok}/${a.n} open`); }
    }
  }
  await Promise.all(Array.from({ length: a.concurrency }, worker));
  const openSecs = (performance.now() - t0) / 1000;
  const noGc = procMem(t.pid);
  await sleep(a.settle * 1000);
  const after = await reading();
  const stillOpen = conns.filter((c) => c && !c.closed).length;
  // a second reading a bit later shows whether the figure is stable
  await sleep(a.settle * 1000);
  const after2 = await reading();
  const stillOpen2 = conns.filter((c) => c && !c.closed).length;
  if (insp) insp.close();
  for (const c of conns) if (c) c.end();
  await sleep(1500);
  const row = {
    n: a.n, ok, open: stillOpen2, openSecs,
    rssBeforeMB: before.rss / 1048576, rssAfterMB: after2.rss / 1048576,
    kbPerConn: (after2.rss - before.rss) / 1024 / Math.max(1, stillOpen2),
    kbPerConnFirst: (after.rss - before.rss) / 1024 / Math.max(1, stillOpen),
    kbPerConnNoGc: (noGc.rss - before.rss) / 1024 / Math.max(1, ok),
    heapKbPerConn: after2.heapUsed !== undefined ? (after2.heapUsed - before.heapUsed) / 1024 / Math.max(1, stillOpen2) : undefined,
    externalKbPerConn: after2.external !== undefined ? (after2.external - before.external) / 1024 / Math.max(1, stillOpen2) : undefined,
    notes: [],
  };
  if (errors.size) row.notes.push(`connect failures: ${[...errors.entries()].map(([k, v]) => `${v}x ${k}`).join('; ')}`);
  if (stillOpen2 < ok) row.notes.push(`${ok - stillOpen2} connections were closed by the broker while idle (first: ${conns.find((c) => c && c.closed)?.closeInfo})`);
  log(`${t.name}: ${fmt(row.kbPerConn)} KiB/conn (${stillOpen2} open), RSS ${fmt(row.rssBeforeMB)} -> ${fmt(row.rssAfterMB)} MB`);
  return row;
}, (name) => ({ inspect: name !== 'mosquitto' }));

printTable(`idle connections: N=${a.n} WS, keepalive ${a.keepalive}s, RSS per connection after forced GC (node targets)`, rows, [
  { key: 'ok', label: 'connected' },
  { key: 'open', label: 'still_open' },
  { key: 'openSecs', label: 'open_s', digits: 1 },
  { key: 'rssBeforeMB', label: 'RSS_before_MB', digits: 1 },
  { key: 'rssAfterMB', label: 'RSS_after_MB', digits: 1 },
  { key: 'kbPerConn', label: 'KiB/conn', digits: 2, ratio: true },
  { key: 'kbPerConnFirst', label: 'KiB/conn(1st)', digits: 2 },
  { key: 'kbPerConnNoGc', label: 'KiB/conn(noGC)', digits: 2 },
  { key: 'heapKbPerConn', label: 'JSheap_KiB/conn', digits: 2, ratio: true },
  { key: 'externalKbPerConn', label: 'ext+AB_KiB/conn', digits: 2 },
]);
log('done');
process.exit(0);
