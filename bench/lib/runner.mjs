// Runs one scenario against each target in turn (fresh broker per target),
// measuring broker / redis / generator CPU over the scenario's window.
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startTarget, parseTargets, fleetwireAvailable, BENCH_DIR, LOAD_CPU } from './targets.mjs';
import { procCpuSplit, procCpuSeconds, selfCpuSeconds, selfCpuSplit, pinSelf, log, procMem } from './util.mjs';
import { openInspector, topSelf, selfByArea } from './inspector.mjs';

const active = new Set();
let stopping = false;
async function stopActiveAndExit(code) {
  if (stopping) return; stopping = true;
  await Promise.race([Promise.all([...active].map((t) => t.stop().catch(() => {}))), new Promise((r) => setTimeout(r, 10000))]);
  process.exit(code);
}

/** `pinTo`: the generator's CPU list (taskset), LOAD_CPU unless given. */
export function setupProcess({ pinTo = LOAD_CPU } = {}) {
  process.on('SIGINT', () => { log('SIGINT: stopping brokers'); stopActiveAndExit(130); });
  process.on('SIGTERM', () => { log('SIGTERM: stopping brokers'); stopActiveAndExit(143); });
  if (!pinSelf(pinTo)) log('warning: could not pin the load generator with taskset');
  // Never let a bench hang forever: every script has a hard wall-clock cap.
  process.on('unhandledRejection', (e) => { log('unhandled rejection', e); });
}

export function hardDeadline(seconds) {
  const t = setTimeout(() => { log(`hard deadline of ${seconds}s reached, stopping brokers and exiting`); stopActiveAndExit(3); }, seconds * 1000);
  t.unref();
}

/** A snapshot of every process' CPU; .since(prev) gives deltas. */
export function cpuSnapshot(t) {
  return {
    at: performance.now(),
    broker: procCpuSeconds(t.pid),
    redis: t.redisPid ? procCpuSeconds(t.redisPid) : null,
    gen: selfCpuSeconds(),
    genSplit: selfCpuSplit(),
    brokerSplit: procCpuSplit(t.pid),
    mem: procMem(t.pid),
  };
}

export function cpuDelta(a, b) {
  const wall = (b.at - a.at) / 1000;
  return {
    wall,
    brokerCpu: a.broker !== null && b.broker !== null ? b.broker - a.broker : NaN,
    redisCpu: a.redis !== null && b.redis !== null ? b.redis - a.redis : null,
    genCpu: b.gen - a.gen,
    genSys: b.genSplit.sys - a.genSplit.sys,
    brokerSys: a.brokerSplit && b.brokerSplit ? b.brokerSplit.sys - a.brokerSplit.sys : NaN,
  };
}

/**
 * scenario(target, ctx) -> row object. ctx.measure(fn) is available for profiling:
 * scenario calls ctx.profileStart()/ctx.profileStop() around its window.
 */
export async function runAcross(args, scriptName, scenario, startOptsFor = () => ({})) {
  const rows = [];
  for (const name of parseTargets(args.targets)) {
    if (name === 'fleetwire' && !fleetwireAvailable()) {
      log('fleetwire: cli/dist/main.js not built, skipping');
      rows.push({ target: name, skipped: true, error: 'skipped: /work/main/cli/dist/main.js not built' });
      continue;
    }
    let t;
    const profile = Boolean(args.profile) && name !== 'mosquitto';
    let startErr = null;
    for (let attempt = 1; attempt <= 3 && !t; attempt++) {
      try {
        t = await startTarget(name, { ...startOptsFor(name), inspect: profile || startOptsFor(name).inspect });
      } catch (err) {
        startErr = err;
        log(err.message);
        if (!/EADDRINUSE/.test(err.message)) break;
        log(`${name}: port clash, retrying (${attempt}/3)`);
      }
    }
    if (!t) {
      rows.push({ target: name, error: `failed to start: ${startErr.message.split('\n')[0]}`, notes: [startErr.message] });
      continue;
    }
    active.add(t);
    let insp = null;
    const ctx = {
      async profileStart() {
        if (!profile) return;
        insp = await openInspector(t.inspectPort);
        await insp.profileStart(500);
      },
      async profileStop() {
        if (!insp) return null;
        const prof = await insp.profileStop();
        insp.close(); insp = null;
        const dir = join(BENCH_DIR, 'results', 'profiles');
        mkdirSync(dir, { recursive: true });
        const file = join(dir, `${scriptName}-${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`);
        writeFileSync(file, JSON.stringify(prof));
        return { file, top: topSelf(prof, 15), areas: selfByArea(prof).slice(0, 12) };
      },
    };
    let keepLogs = Boolean(process.env.BENCH_KEEP_LOGS);
    try {
      const row = await scenario(t, ctx);
      row.target = name;
      if (row.keepLogs || !t.alive) keepLogs = true;
      if (!t.alive) { row.notes = [...(row.notes ?? []), `broker ${t.exitInfo()}; last output:\n${t.stderrTail(15)}`]; }
      rows.push(row);
    } catch (err) {
      const dead = !t.alive;
      log(`${name}: scenario failed: ${err.stack ?? err.message}`);
      keepLogs = true;
      rows.push({ target: name, error: `${err.message}${dead ? ` (broker ${t.exitInfo()})` : ''}`, notes: [`broker output (last lines):\n${t.stderrTail(15)}`, `broker logs kept in ${t.logDir}`] });
    } finally {
      if (insp) insp.close();
      await t.stop().catch((e) => log('stop failed', e.message));
      active.delete(t);
      if (keepLogs) log(`${name}: broker logs kept in ${t.logDir}`);
      else rmSync(t.logDir, { recursive: true, force: true });
    }
  }
  return rows;
}

export function printProfiles(rows) {
  for (const r of rows) {
    if (!r.profile) continue;
    const lines = [`\n--- CPU profile of ${r.target} during the measured window (${r.profile.file}) ---`, 'top self-time functions:'];
    for (const f of r.profile.top) lines.push(`  ${f.pct.toFixed(1).padStart(5)}%  ${f.fn}`);
    lines.push('self time by package/area:');
    for (const a of r.profile.areas) lines.push(`  ${a.pct.toFixed(1).padStart(5)}%  ${a.area}`);
    console.log(lines.join('\n'));
  }
}
