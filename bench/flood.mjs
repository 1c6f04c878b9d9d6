// Flood: F clients publish QoS0 (or, with --qos 1, QoS1) as fast as their sockets
// allow while V "victim" clients publish to themselves at a modest rate and measure latency.
//   node bench/flood.mjs [--flooders 10] [--victims 5] [--flood-seconds 10] [--victim-rate 20] [--qos 0]
// Fleetwire runs with its DEFAULT publish limits (the point is that the broker
// protects itself); connection limits are defaults too (every client uses its
// own source address 127.5.0.x). Flooders that get disconnected reconnect after
// 250 ms until the flood ends, like an attacker would.
// Survival = broker process alive after the flood AND a fresh client can
// connect, subscribe and get its own message back within 5 s.
import { parseArgs, usage, printTable, log, sleep, summarize, procMem, procCpuSeconds } from './lib/util.mjs';
import { runAcross, setupProcess, hardDeadline, printProfiles } from './lib/runner.mjs';
import { MqttConn, publishPacket, publishParts, loopbackAddress } from './lib/conn.mjs';
import { jsonPayload, readingsOf, telemetryPayload } from './lib/throughput.mjs';

/** Phases by number: a telemetry reading is a number. */
const PHASES = ['baseline', 'flood', 'after', 'done'];

const D = { targets: 'all', qos: 0, flooders: 10, victims: 5, floodSeconds: 10, victimRate: 20, baseline: 3, after: 5, batch: 100, observer: false, maxQueuedBytes: 262144, profile: false, timeline: true };
const a = parseArgs(D);
if (a.help) { console.log(usage('flood', 'unthrottled publishers vs. victims; does the broker survive', D)); process.exit(0); }
setupProcess();
hardDeadline(90 + 3 * (a.baseline + a.floodSeconds + a.after + 30));

const floodIds = Array.from({ length: a.flooders }, (_, i) => `flood-${String(i).padStart(2, '0')}`);
const victimIds = Array.from({ length: a.victims }, (_, i) => `victim-${i}`);

function mostFrequent(text) {
  const c = new Map();
  for (const line of text.split('\n')) {
    let k = line;
    try { const j = JSON.parse(line); k = `[level ${j.level}] ${j.msg}`; } catch { /* not JSON */ }
    c.set(k, (c.get(k) ?? 0) + 1);
  }
  const [k, n] = [...c.entries()].sort((x, y) => y[1] - x[1])[0] ?? ['-', 0];
  return `${n}x "${k.slice(0, 100)}"`;
}

async function probe(t) {
  // fresh identity + address; connect, subscribe own topic, publish, receive
  const id = 'probe-0001';
  let got = false;
  const c = new MqttConn({ ...(await t.clientOpts({ kind: 'device', id }, 'ws')), keepalive: 60, localAddress: '127.5.1.1', timeoutMs: 5000, onPublish: () => { got = true; } });
  const t0 = performance.now();
  try {
    await c.connect();
    await c.subscribe(`devices/${id}/telemetry`, 0);
    c.write(publishPacket(`devices/${id}/telemetry`, telemetryPayload({ probe: 1 })));
    const until = performance.now() + 5000;
    while (!got && performance.now() < until) await sleep(20);
    c.end();
    return got ? { ok: true, ms: performance.now() - t0 } : { ok: false, why: 'connected but own message not delivered within 5 s' };
  } catch (err) {
    return { ok: false, why: err.message };
  }
}

const rows = await runAcross(a, 'flood', async (t, ctx) => {
  await t.registerDevices([...floodIds, ...victimIds, 'probe-0001']);
  let phase = 'baseline';
  const lat = { baseline: [], flood: [], after: [] };
  const victimSent = { baseline: 0, flood: 0, after: 0 };
  const victimGot = { baseline: 0, flood: 0, after: 0 };

  // ---- victims
  const victims = [];
  let onVictimLatency = () => {};
  for (let i = 0; i < victimIds.length; i++) {
    const id = victimIds[i];
    const c = new MqttConn({
      ...(await t.clientOpts({ kind: 'device', id }, 'ws')), keepalive: 60, localAddress: loopbackAddress(100 + i, 5),
      onPublish(buf, s, e, b0) {
        const now = performance.now();
        const p = publishParts(buf, s, e, b0);
        const m = readingsOf(buf.toString('utf8', p.payloadStart, p.payloadEnd));
        m.ph = PHASES[m.ph];
        if (m.ph && lat[m.ph]) { lat[m.ph].push(now - m.ts); victimGot[m.ph]++; onVictimLatency(now - m.ts); }
      },
    });
    await c.connect();
    await c.subscribe(`devices/${id}/telemetry`, 0);
    victims.push({ id, c, topic: `devices/${id}/telemetry`, seq: 0 });
  }
  let observerCount = 0;
  let observer = null;
  if (a.observer) {
    observer = new MqttConn({ ...(await t.clientOpts({ kind: 'service', n: 1 }, 'ws')), keepalive: 60, localAddress: '127.5.1.2', onPublish: () => { observerCount++; } });
    await observer.connect();
    await observer.subscribe('devices/+/telemetry', 0);
  }
  const victimTimers = victims.map((v, i) => setTimeout(() => {
    v.timer = setInterval(() => {
      if (v.c.closed || phase === 'done') return;
      victimSent[phase]++;
      v.c.write(publishPacket(v.topic, telemetryPayload({ ts: performance.now(), ph: PHASES.indexOf(phase), seq: v.seq++ })));
    }, 1000 / a.victimRate);
  }, (i * 1000) / a.victimRate / victims.length));

  // ---- flooders
  const payload = jsonPayload(64);
  let flooding = false;
  let floodWrites = 0; let kicks = 0; let reconnectFails = 0; const kickReasons = new Map();
  const events = []; let floodT0 = 0; let flooderRecv = 0; let firstFlooderMsg = null;
  const flooders = floodIds.map((id, i) => ({ id, i, topic: `devices/${id}/telemetry`, c: null, batchBuf: null }));
  // Write until the socket pushes back; bounded per call so the event loop
  // (victims, timers) keeps running even when the broker drains instantly.
  const pump = (f) => {
    if (!flooding || !f.c || f.c.closed || f.c.sock.destroyed) return;
    for (let k = 0; k < 16; k++) {
      if (f.c.writeQueued >= a.maxQueuedBytes || f.c.sock.destroyed) return;
      if (f.c.writeRaw(f.batchBuf) === false && f.c.sock.destroyed) return;
      floodWrites += a.batch;
    }
    if (!f.immediate) { f.immediate = true; setImmediate(() => { f.immediate = false; pump(f); }); }
  };
  async function connectFlooder(f) {
    const c = new MqttConn({
      ...(await t.clientOpts({ kind: 'device', id: f.id }, 'ws')), keepalive: 60, localAddress: loopbackAddress(f.i, 5), timeoutMs: 5000,
      onPublish: (buf, st, en, b0) => {
        flooderRecv++;
        if (flooderRecv <= 1) { const p = publishParts(buf, st, en, b0); firstFlooderMsg = `${buf.toString('utf8', p.topicStart, p.topicEnd)} ${buf.toString('utf8', p.payloadStart, Math.min(p.payloadEnd, p.payloadStart + 160))}`; }
      },
      onClose: (cc) => {
        if (!flooding || cc.connack !== 0) return; // failed attempts are retried by reconnect()
        kicks++; const k = (cc.closeInfo ?? '?').slice(0, 80); kickReasons.set(k, (kickReasons.get(k) ?? 0) + 1);
        events.push(`${((performance.now() - floodT0) / 1000).toFixed(2)}s ${f.id} closed: ${k}`);
        setTimeout(() => reconnect(f), 250);
      },
    });
    await c.connect();
    f.c = c;
    f.batchBuf = Buffer.concat(Array(a.batch).fill(c.frameFor(publishPacket(f.topic, payload, a.qos))));
    c.sock.on('drain', () => pump(f));
  }
  async function reconnect(f) {
    if (!flooding) return;
    const r0 = performance.now();
    try {
      await connectFlooder(f);
      events.push(`${((performance.now() - floodT0) / 1000).toFixed(2)}s ${f.id} reconnected (connect took ${(performance.now() - r0).toFixed(0)} ms)`);
      pump(f);
    } catch { reconnectFails++; if (flooding) setTimeout(() => reconnect(f), 250); }
  }
  for (const f of flooders) await connectFlooder(f);

  floodT0 = performance.now() + a.baseline * 1000; // provisional, for the timeline labels
  // ---- broker sampling
  let peakRss = 0;
  const sampler = setInterval(() => { const m = procMem(t.pid); if (m) peakRss = Math.max(peakRss, m.rss); }, 200);
  // one line per second: broker CPU%, RSS, victim latency of messages received that second
  const timeline = [];
  let tlCpu = procCpuSeconds(t.pid); let tlAt = performance.now(); let tlLat = [];
  onVictimLatency = (ms) => tlLat.push(ms);
  const tlTimer = setInterval(() => {
    const now = performance.now(); const cpu = procCpuSeconds(t.pid); const m = procMem(t.pid);
    const st = summarize(tlLat); tlLat = [];
    timeline.push(`${((now - floodT0) / 1000).toFixed(0).padStart(4)}s  ${phase.padEnd(8)} broker ${cpu !== null && tlCpu !== null ? ((100 * (cpu - tlCpu)) / ((now - tlAt) / 1000)).toFixed(0).padStart(3) : ' - '}%  rss ${m ? (m.rss / 1048576).toFixed(0).padStart(5) : '    -'} MB  victim msgs ${String(st.n).padStart(4)}  p50 ${st.n ? st.p50.toFixed(1).padStart(8) : '       -'} ms  max ${st.n ? st.max.toFixed(1).padStart(8) : '       -'} ms  flooders up ${flooders.filter((f) => f.c && !f.c.closed).length}`);
    tlCpu = cpu; tlAt = now;
  }, 1000);

  await sleep(a.baseline * 1000);
  await ctx.profileStart();
  const lines0 = t.outputLines;
  const cpu0 = procCpuSeconds(t.pid); const f0 = performance.now();
  floodT0 = f0;
  phase = 'flood'; flooding = true;
  log(`${t.name}: flooding for ${a.floodSeconds}s`);
  for (const f of flooders) pump(f);
  // the pump is drain-driven; poll too in case a socket never fills
  const poller = setInterval(() => { for (const f of flooders) pump(f); }, 5);
  await sleep(a.floodSeconds * 1000);
  flooding = false; clearInterval(poller);
  const cpu1 = procCpuSeconds(t.pid); const f1 = performance.now();
  const lines1 = t.outputLines;
  const profile = await ctx.profileStop().catch(() => null);
  phase = 'after';
  for (const f of flooders) if (f.c) f.c.destroy();
  await sleep(a.after * 1000);
  phase = 'done';
  victimTimers.forEach(clearTimeout); victims.forEach((v) => clearInterval(v.timer));
  clearInterval(sampler); clearInterval(tlTimer);
  await sleep(500);

  const alive = t.alive;
  const pr = alive ? await probe(t) : { ok: false, why: `broker ${t.exitInfo()}` };
  const victimsDropped = victims.filter((v) => v.c.closed);
  victims.forEach((v) => v.c.end()); if (observer) observer.end();

  const sb = summarize(lat.baseline); const sf = summarize(lat.flood); const sa = summarize(lat.after);
  const wall = (f1 - f0) / 1000;
  const row = {
    survived: alive && pr.ok,
    alive,
    floodOfferedPerS: floodWrites / wall,
    observedPerS: a.observer ? observerCount / wall : undefined,
    kicks,
    flooderRecv,
    brokerLogLines: lines1 - lines0,
    baseP50: sb.p50, baseP99: sb.p99,
    floodP50: sf.p50, floodP99: sf.p99, floodMax: sf.max,
    afterP99: sa.p99,
    victimLossPct: victimSent.flood ? (100 * (victimSent.flood - victimGot.flood)) / victimSent.flood : NaN,
    victimsDisconnected: victimsDropped.length,
    brokerUtil: cpu1 !== null && cpu0 !== null ? (100 * (cpu1 - cpu0)) / wall : NaN,
    peakRssMB: peakRss / 1048576,
    notes: [],
    profile, timeline, events,
  };
  if (row.brokerLogLines > 100) {
    row.keepLogs = true;
    row.notes.push(`broker wrote ${row.brokerLogLines} log lines during the ${a.floodSeconds}s flood; most frequent (last 60 lines): ${mostFrequent(t.stderrTail(60))} (logs: ${t.logDir})`);
  }
  if (flooderRecv) row.notes.push(`flooders received ${flooderRecv} PUBLISH packets from the broker during the flood (first: ${firstFlooderMsg})`);
  if (!pr.ok) row.notes.push(`post-flood probe failed: ${pr.why}`);
  else row.notes.push(`post-flood probe connected+round-trip in ${pr.ms.toFixed(1)} ms`);
  if (kickReasons.size) row.notes.push(`flooder disconnects: ${[...kickReasons.entries()].map(([k, v]) => `${v}x ${k}`).join('; ')}; reconnect failures ${reconnectFails}`);
  if (victimsDropped.length) row.notes.push(`victims disconnected: ${victimsDropped.map((v) => `${v.id} (${v.c.closeInfo})`).join('; ')}`);
  if (!alive) {
    const tail = t.stderrTail(40);
    const so = /RangeError: Maximum call stack size exceeded[\s\S]{0,600}/.exec(tail);
    row.notes.push(`broker died: ${t.exitInfo()}${so ? `\n${so[0].split('\n').slice(0, 8).join('\n')}` : `\n${tail.split('\n').slice(-12).join('\n')}`}`);
  }
  log(`${t.name}: survived=${row.survived} victims p99 ${sb.p99?.toFixed(2)} -> ${sf.p99?.toFixed(2)} ms, flood offered ${Math.round(row.floodOfferedPerS)}/s, kicks ${kicks}`);
  return row;
}, () => ({ limits: 'default' }));

printTable(`flood: ${a.flooders} unthrottled QoS${a.qos} publishers for ${a.floodSeconds}s vs ${a.victims} victims at ${a.victimRate} msg/s (latency ms); fleetwire with DEFAULT limits`, rows, [
  { key: 'survived', label: 'survived' },
  { key: 'alive', label: 'alive' },
  { key: 'floodOfferedPerS', label: 'flood_written/s' },
  ...(a.observer ? [{ key: 'observedPerS', label: 'observer_rcv/s' }] : []),
  { key: 'kicks', label: 'flooder_kicks' },
  { key: 'flooderRecv', label: 'flooder_rcvd' },
  { key: 'brokerLogLines', label: 'broker_log_lines' },
  { key: 'baseP50', label: 'victim_p50_before', digits: 3 },
  { key: 'baseP99', label: 'victim_p99_before', digits: 3 },
  { key: 'floodP50', label: 'victim_p50_flood', digits: 3, ratio: true },
  { key: 'floodP99', label: 'victim_p99_flood', digits: 3, ratio: true },
  { key: 'floodMax', label: 'victim_max_flood', digits: 1 },
  { key: 'afterP99', label: 'victim_p99_after', digits: 3 },
  { key: 'victimLossPct', label: 'victim_lost%' },
  { key: 'victimsDisconnected', label: 'victims_dropped' },
  { key: 'brokerUtil', label: 'broker%_flood', digits: 0 },
  { key: 'peakRssMB', label: 'peakRSS_MB', digits: 0 },
]);
if (a.timeline) {
  for (const r of rows) {
    if (!r.timeline) continue;
    console.log(`\n--- ${r.target} timeline (t=0 is flood start) ---\n${r.timeline.join('\n')}`);
    if (r.events.length) console.log(`flooder events (first 30 of ${r.events.length}):\n  ${r.events.slice(0, 30).join('\n  ')}`);
  }
}
printProfiles(rows);
log('done');
process.exit(0);
