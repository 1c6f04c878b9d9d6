// Small helpers shared by every bench script: flags, process stats, ports, tables.
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import net from 'node:net';

/** `--key value`, `--key=value`, `--flag` (true). Numbers are converted. */
export function parseArgs(defaults, argv = process.argv.slice(2)) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    let key = a.slice(2);
    let val;
    const eq = key.indexOf('=');
    if (eq >= 0) { val = key.slice(eq + 1); key = key.slice(0, eq); }
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) val = argv[++i];
    else val = true;
    const camel = key.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (key === 'help' || camel === 'help') { out.help = true; continue; }
    if (!(camel in defaults)) throw new Error(`unknown flag --${key} (known: ${Object.keys(defaults).map((k) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())).join(' ')})`);
    if (typeof defaults[camel] === 'number') {
      const n = Number(val);
      if (!Number.isFinite(n)) throw new Error(`--${key} needs a number`);
      val = n;
    } else if (typeof defaults[camel] === 'boolean') {
      val = val === true || val === 'true' || val === '1' || val === 'yes';
    }
    out[camel] = val;
  }
  return out;
}

export function usage(name, desc, defaults) {
  const lines = [`${name}: ${desc}`, '', 'flags (default):'];
  for (const [k, v] of Object.entries(defaults)) {
    lines.push(`  --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} (${JSON.stringify(v)})`);
  }
  return lines.join('\n');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = (() => {
  try { return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100; } catch { return 100; }
})();

/** utime+stime of a whole process (all threads), in seconds; null if gone. */
export function procCpuSeconds(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // after "pid (comm) ", field index 0 is state (field 3); utime is field 14 -> index 11
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch { return null; }
}

export function procCpuSplit(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]) / CLK_TCK, sys: Number(f[12]) / CLK_TCK };
  } catch { return null; }
}

/** VmRSS and VmHWM in bytes; null if gone. */
export function procMem(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+) kB/.exec(s);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(s);
    return { rss: rss ? Number(rss[1]) * 1024 : 0, hwm: hwm ? Number(hwm[1]) * 1024 : 0 };
  } catch { return null; }
}

export function procAlive(pid) {
  try { process.kill(pid, 0); } catch { return false; }
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch { return false; }
}

/** CPU seconds of this (load generator) process, user+system, all threads. */
export function selfCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

export function selfCpuSplit() {
  const u = process.cpuUsage();
  return { user: u.user / 1e6, sys: u.system / 1e6 };
}

/** Pin this process (all of its threads) to the given CPU list, e.g. "1". */
export function pinSelf(cpus) {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', String(cpus), String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch { return false; }
}

/**
 * A free loopback port BELOW the kernel's ephemeral range, so that the many
 * outgoing connections of a run cannot grab it between this check and the
 * broker's listen() (which happened with ports from listen(0)).
 */
export async function freePort() {
  let low = 32768;
  try { low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low; } catch { /* default */ }
  const lo = Math.max(1024, Math.min(10000, low - 2000));
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = lo + Math.floor(Math.random() * Math.max(1, low - lo - 1));
    const ok = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port found');
}

export async function waitForPort(port, timeoutMs, isDead = () => false) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (isDead()) throw new Error('process exited before listening');
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`port ${port} not listening after ${timeoutMs} ms`);
}

/** Percentile of an already sorted numeric array (nearest-rank). */
export function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

export function summarize(samples) {
  const s = Float64Array.from(samples).sort();
  return {
    n: s.length,
    p50: pct(s, 50), p90: pct(s, 90), p99: pct(s, 99), p999: pct(s, 99.9),
    max: s.length ? s[s.length - 1] : NaN,
  };
}

export function fmt(v, digits = 2) {
  if (v === null || v === undefined) return '-';
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (!Number.isFinite(v)) return 'n/a';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(digits);
}

/**
 * Prints a table: one row per target, one column per metric, then a ratio
 * block relative to the baseline target (fleetwire when present).
 * columns: [{ key, label, digits?, ratio?: boolean }]
 */
export function printTable(title, rows, columns, baselineName = 'fleetwire') {
  const lines = [];
  lines.push('', `=== ${title} ===`);
  const header = ['target', ...columns.map((c) => c.label)];
  const body = rows.map((r) => [r.target, ...columns.map((c) => (r.error && r[c.key] === undefined ? '-' : fmt(r[c.key], c.digits ?? 2)))]);
  lines.push(...renderGrid(header, body));
  const okRows = rows.filter((r) => !r.skipped);
  const base = okRows.find((r) => r.target === baselineName) ?? okRows[0];
  const ratioCols = columns.filter((c) => c.ratio);
  if (base && ratioCols.length && okRows.length > 1) {
    lines.push('', `ratios (target / ${base.target}):`);
    const rb = okRows.map((r) => [r.target, ...ratioCols.map((c) => {
      const a = r[c.key]; const b = base[c.key];
      return typeof a === 'number' && typeof b === 'number' && b !== 0 && Number.isFinite(a) && Number.isFinite(b) ? fmtRatio(a / b) : '-';
    })]);
    lines.push(...renderGrid(['target', ...ratioCols.map((c) => c.label)], rb));
  }
  for (const r of rows) if (r.error) lines.push(`note ${r.target}: ${r.error}`);
  for (const r of rows) if (r.notes) for (const n of r.notes) lines.push(`note ${r.target}: ${n}`);
  console.log(lines.join('\n'));
}

function fmtRatio(r) {
  if (r === 0) return '0x';
  return (Math.abs(r) < 0.1 ? r.toPrecision(2) : r.toFixed(2)) + 'x';
}

function renderGrid(header, body) {
  const widths = header.map((h, i) => Math.max(String(h).length, ...body.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
}

export function log(...a) {
  console.error(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
}

/**
 * Raises this process's open-file limit (RLIMIT_NOFILE) to at least `need` if it can (root, or a
 * hard limit high enough), else as far as the hard limit allows. Child processes (the brokers)
 * inherit it. Returns the limits in force.
 */
export function raiseFileLimit(need) {
  const limits = () => {
    const m = /Max open files\s+(\d+)\s+(\d+|unlimited)/.exec(readFileSync('/proc/self/limits', 'utf8'));
    return { soft: Number(m[1]), hard: m[2] === 'unlimited' ? 1e9 : Number(m[2]) };
  };
  const now = limits();
  try { execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${Math.max(need, now.soft)}:${Math.max(need, now.hard)}`], { stdio: 'pipe' }); }
  catch {
    try { execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${now.hard}:${now.hard}`], { stdio: 'pipe' }); } catch { /* keep */ }
  }
  return limits();
}
