// Authenticated connects per second: WebSocket upgrade + CONNECT -> CONNACK,
// then DISCONNECT and close, with bounded concurrency.
//   node bench/connects.mjs [--total 3000] [--concurrency 20] [--max-seconds 30]
// Fleetwire: each connect carries a distinct device's EdDSA JWT in the
// `auth.<jwt>` subprotocol (devices pre-registered, tokens pre-minted, so
// the cost measured is the broker's verification + registry work). The other
// targets take the same clientIds anonymously. Source addresses rotate over
// 127.3.x.y so per-IP limits and ephemeral ports are not the limit.
import { parseArgs, usage, printTable, log, sleep, summarize } from './lib/util.mjs';
import { transportFor } from './lib/targets.mjs';
import { runAcross, setupProcess, hardDeadline, cpuSnapshot, cpuDelta, printProfiles } from './lib/runner.mjs';
import { MqttConn, loopbackAddress } from './lib/conn.mjs';
import { Redis } from 'ioredis';

async function commandStats(url) {
  const r = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1 });
  try {
    const info = await r.info('commandstats');
    const out = {};
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2]);
    return out;
  } finally { r.disconnect(); }
}

const D = { targets: 'all', total: 3000, concurrency: 20, devices: 1000, ips: 64, maxSeconds: 30, transport: 'ws', profile: false };
const a = parseArgs(D);
if (a.help) { console.log(usage('connects', 'authenticated CONNECT->CONNACK rate and latency', D)); process.exit(0); }
setupProcess();
hardDeadline(60 + 3 * (a.maxSeconds + 40));
if (a.devices < a.concurrency * 2) throw new Error('--devices must be at least twice --concurrency (a device id is never connected twice at once)');

const ids = Array.from({ length: a.devices }, (_, i) => `conn-${String(i).padStart(5, '0')}`);
const rows = await runAcross(a, 'connects', async (t, ctx) => {
  log(`${t.name}: registering ${ids.length} devices / minting tokens`);
  await t.registerDevices(ids);
  const specs = [];
  for (const id of ids) specs.push(await t.clientOpts({ kind: 'device', id }, transportFor('device', a.transport)));
  // warm-up: a few connects so JIT and pools are warm
  for (let i = 0; i < 20; i++) {
    const c = new MqttConn({ ...specs[i], keepalive: 60, localAddress: loopbackAddress(i, 3) });
    await c.connect(); c.end();
  }
  await sleep(500);
  await ctx.profileStart();
  const cmd0 = t.redisUrl ? await commandStats(t.redisUrl) : null;
  const s0 = cpuSnapshot(t);
  const full = []; const mqttOnly = []; const tcpT = []; const upT = [];
  const errors = new Map();
  let next = 0; let ok = 0;
  const deadline = performance.now() + a.maxSeconds * 1000;
  async function worker() {
    while (next < a.total && performance.now() < deadline) {
      const i = next++;
      const c = new MqttConn({ ...specs[i % specs.length], keepalive: 60, localAddress: a.ips ? loopbackAddress(i % a.ips, 3) : undefined, timeoutMs: 10000 });
      try {
        await c.connect();
        ok++;
        full.push(c.timings.connack - c.timings.start);
        mqttOnly.push(c.timings.connack - c.timings.connectSent);
        tcpT.push(c.timings.tcp - c.timings.start);
        if (c.timings.upgraded) upT.push(c.timings.upgraded - c.timings.tcp);
        c.end();
      } catch (err) {
        const k = err.message.replace(/\d{4,}/g, 'N');
        errors.set(k, (errors.get(k) ?? 0) + 1);
      }
    }
  }
  await Promise.all(Array.from({ length: a.concurrency }, worker));
  const s1 = cpuSnapshot(t);
  const profile = await ctx.profileStop();
  await sleep(1000); // let disconnect bookkeeping finish before counting Redis commands
  const cmd1 = t.redisUrl ? await commandStats(t.redisUrl) : null;
  const d = cpuDelta(s0, s1);
  await sleep(1000);
  const f = summarize(full); const m = summarize(mqttOnly); const tc = summarize(tcpT); const up = summarize(upT);
  const row = {
    attempted: next, ok, connPerS: ok / d.wall,
    p50: f.p50, p99: f.p99, mqttP50: m.p50, mqttP99: m.p99, tcpP50: tc.p50, tcpP99: tc.p99, upP50: up.p50, upP99: up.p99,
    brokerCpu: d.brokerCpu, brokerUtil: (100 * d.brokerCpu) / d.wall,
    connPerCpuS: ok / d.brokerCpu,
    redisCpu: d.redisCpu ?? undefined, genUtil: (100 * d.genCpu) / d.wall,
    profile, notes: [],
  };
  if (cmd0 && cmd1 && ok) {
    const per = Object.keys(cmd1).map((k) => [k, (cmd1[k] - (cmd0[k] ?? 0)) / ok]).filter(([, v]) => v >= 0.05).sort((x, y) => y[1] - x[1]);
    row.notes.push(`redis commands per connect+disconnect: ${per.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} (total ${per.reduce((x, [, v]) => x + v, 0).toFixed(1)}, excluding the harness's own INFO)`);
  }
  if (errors.size) row.notes.push(`failures: ${[...errors.entries()].map(([k, v]) => `${v}x ${k}`).join('; ')}`);
  log(`${t.name}: ${ok}/${next} ok, ${row.connPerS.toFixed(0)}/s, p50 ${f.p50.toFixed(2)} p99 ${f.p99.toFixed(2)} ms`);
  return row;
});

printTable(`connects: ${a.total} connects, concurrency ${a.concurrency}, ${a.transport}, fleetwire with device JWTs (others anonymous), latency in ms`, rows, [
  { key: 'ok', label: 'ok' },
  { key: 'attempted', label: 'tried' },
  { key: 'connPerS', label: 'conn/s', ratio: true },
  { key: 'p50', label: 'p50_ms(tcp->connack)', ratio: true },
  { key: 'p99', label: 'p99_ms', ratio: true },
  { key: 'tcpP50', label: 'tcp_p50' },
  { key: 'tcpP99', label: 'tcp_p99' },
  { key: 'upP50', label: 'upgrade_p50' },
  { key: 'upP99', label: 'upgrade_p99' },
  { key: 'mqttP50', label: 'p50_ms(CONNECT->CONNACK)' },
  { key: 'mqttP99', label: 'p99_ms(CONNECT->CONNACK)' },
  { key: 'brokerCpu', label: 'brokerCPU_s' },
  { key: 'brokerUtil', label: 'broker%', digits: 0 },
  { key: 'connPerCpuS', label: 'conn/brokerCPU_s', ratio: true },
  { key: 'redisCpu', label: 'redisCPU_s' },
  { key: 'genUtil', label: 'gen%', digits: 0 },
]);
printProfiles(rows);
log('done');
process.exit(0);
