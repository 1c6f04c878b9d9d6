// Publish-to-deliver latency at a fixed offered rate (open loop).
//   node bench/latency.mjs [--rate 2000] [--pubs 10] [--transport ws|tcp] [--duration 10]
// Topology: devices "lat-00".."lat-NN" publish devices/<id>/telemetry QoS0 at
// rate/pubs each (WS); service "service:bench-svc:1" subscribes devices/+/telemetry
// (WS, or TCP with --transport tcp). The payload carries the send time
// (performance.now() of this process, which also receives), so latency is
// measured on one clock. Messages are sent on schedule from a 1 ms timer;
// the generator's own lag behind schedule is reported too.
import { parseArgs, usage, printTable, log, sleep, summarize } from './lib/util.mjs';
import { transportFor } from './lib/targets.mjs';
import { runAcross, setupProcess, hardDeadline, cpuSnapshot, cpuDelta, printProfiles } from './lib/runner.mjs';
import { connectAll, readingsOf, telemetryPayload } from './lib/throughput.mjs';
import { MqttConn, publishPacket, publishParts } from './lib/conn.mjs';

const D = { targets: 'all', transport: 'ws', rate: 2000, pubs: 10, warmup: 2, duration: 10, profile: false };
const a = parseArgs(D);
if (a.help) { console.log(usage('latency', 'p50/p99 publish-to-deliver latency at a fixed offered rate', D)); process.exit(0); }
setupProcess();
hardDeadline(60 + 3 * (a.warmup + a.duration + 30));

const ids = Array.from({ length: a.pubs }, (_, i) => `lat-${String(i).padStart(2, '0')}`);
const rows = await runAcross(a, `latency-${a.transport}`, async (t, ctx) => {
  await t.registerDevices(ids);
  let measuring = false;
  const samples = [];
  let receivedInWindow = 0;
  const sub = new MqttConn({
    ...(await t.clientOpts({ kind: 'service', n: 1 }, transportFor('service', a.transport))), keepalive: 600,
    onPublish(buf, s, e, b0) {
      const now = performance.now();
      const p = publishParts(buf, s, e, b0);
      const msg = readingsOf(buf.toString('utf8', p.payloadStart, p.payloadEnd));
      if (msg.w === 1) { receivedInWindow++; samples.push(now - msg.ts); }
    },
  });
  await sub.connect();
  await sub.subscribe('devices/+/telemetry', 0);
  const pubSpecs = [];
  for (const id of ids) pubSpecs.push({ ...(await t.clientOpts({ kind: 'device', id }, transportFor('device', a.transport))), keepalive: 600 });
  const pubs = await connectAll(pubSpecs, 10);
  const topics = ids.map((id) => `devices/${id}/telemetry`);

  let sent = 0; let sentInWindow = 0; let maxLagMs = 0;
  let snap0; let snap1;
  const t0 = performance.now();
  const endAt = t0 + (a.warmup + a.duration) * 1000;
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (now >= endAt) { clearInterval(timer); resolve(); return; }
      const due = Math.floor(((now - t0) * a.rate) / 1000);
      if (measuring && due - sent > 0) maxLagMs = Math.max(maxLagMs, ((due - sent - 1) * 1000) / a.rate);
      while (sent < due) {
        const i = sent % pubs.length;
        const payload = telemetryPayload({ ts: performance.now(), seq: sent, w: measuring ? 1 : 0, temp: 21.5 });
        pubs[i].write(publishPacket(topics[i], payload));
        if (measuring) sentInWindow++;
        sent++;
      }
    }, 1);
    // window switches
    setTimeout(async () => {
      await ctx.profileStart();
      measuring = true; snap0 = cpuSnapshot(t);
      setTimeout(() => { measuring = false; snap1 = cpuSnapshot(t); }, a.duration * 1000);
    }, a.warmup * 1000);
  });
  const profile = await ctx.profileStop();
  await sleep(1000);
  pubs.forEach((p) => p.end()); sub.end();
  const d = cpuDelta(snap0, snap1 ?? cpuSnapshot(t));
  const st = summarize(samples);
  const row = {
    offered: sentInWindow / d.wall,
    deliveredPerS: receivedInWindow / d.wall,
    p50: st.p50, p90: st.p90, p99: st.p99, p999: st.p999, max: st.max,
    lostPct: sentInWindow ? (100 * (sentInWindow - receivedInWindow)) / sentInWindow : 0,
    brokerCpu: d.brokerCpu, brokerUtil: (100 * d.brokerCpu) / d.wall,
    cpuUsPerMsg: (1e6 * d.brokerCpu) / Math.max(1, receivedInWindow),
    redisCpu: d.redisCpu ?? undefined, genUtil: (100 * d.genCpu) / d.wall, genLagMs: maxLagMs,
    profile, notes: [],
  };
  if (pubs.some((p) => p.closed) || sub.closed) row.notes.push(`disconnects during run: ${[...pubs, sub].filter((c) => c.closed && c.closeInfo !== 'closed by client').map((c) => `${c.o.clientId}: ${c.closeInfo}`).slice(0, 3).join('; ')}`);
  log(`${t.name}: p50 ${st.p50.toFixed(3)} ms p99 ${st.p99.toFixed(3)} ms, lost ${row.lostPct.toFixed(2)}%`);
  return row;
});

printTable(`latency at ${a.rate} msg/s offered (${a.pubs} WS publishers -> 1 subscriber over ${a.transport}), QoS0, ${a.duration}s window, ms`, rows, [
  { key: 'offered', label: 'offered/s', digits: 0 },
  { key: 'deliveredPerS', label: 'deliv/s', digits: 0 },
  { key: 'p50', label: 'p50_ms', digits: 3, ratio: true },
  { key: 'p90', label: 'p90_ms', digits: 3 },
  { key: 'p99', label: 'p99_ms', digits: 3, ratio: true },
  { key: 'p999', label: 'p99.9_ms', digits: 3 },
  { key: 'max', label: 'max_ms', digits: 3 },
  { key: 'lostPct', label: 'lost%' },
  { key: 'brokerCpu', label: 'brokerCPU_s' },
  { key: 'brokerUtil', label: 'broker%', digits: 1 },
  { key: 'cpuUsPerMsg', label: 'brokerCPU_us/msg', digits: 1, ratio: true },
  { key: 'redisCpu', label: 'redisCPU_s' },
  { key: 'genUtil', label: 'gen%', digits: 0 },
  { key: 'genLagMs', label: 'genLag_ms', digits: 1 },
]);
printProfiles(rows);
log('done');
process.exit(0);
