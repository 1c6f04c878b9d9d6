// Closed-loop saturating load shared by fanout and fanin.
//
// Publishers write pre-encoded PUBLISH frames in batches while the number of
// messages "in flight" (published but not yet received by the slowest
// subscriber) is below a window. That keeps the broker saturated without
// letting its queues grow without bound. QoS0 may drop: if the slowest
// subscriber makes no progress for `stallMs` the outstanding messages are
// written off (counted as stalls) so the loop never deadlocks.
import { MqttConn, publishPacket } from './conn.mjs';
import { cpuSnapshot, cpuDelta } from './runner.mjs';
import { sleep, log } from './util.mjs';

/**
 * A telemetry payload the broker accepts (common/contracts/schemas/telemetry.schema.json:
 * `{at, readings: [{name, value, unit}]}`), carrying `values` as readings, padded with
 * readings to about `padTo` bytes (up to the schema's 32 readings).
 */
export function telemetryPayload(values, padTo = 0) {
  const readings = Object.entries(values).map(([name, value]) => ({ name, value, unit: '' }));
  let s = JSON.stringify({ at: Date.now(), readings });
  for (let i = 0; s.length < padTo && readings.length < 32; i++) {
    readings.push({ name: `p${i}`, value: 0, unit: 'x'.repeat(Math.max(0, Math.min(16, padTo - s.length - 32))) });
    s = JSON.stringify({ at: Date.now(), readings });
  }
  return s;
}

/** The readings of a telemetry payload as {name: value}. */
export function readingsOf(text) {
  return Object.fromEntries(JSON.parse(text).readings.map((r) => [r.name, r.value]));
}

export function jsonPayload(bytes, extra = {}) {
  return Buffer.from(telemetryPayload({ temp: 21.5, hum: 40.25, bat: 3.71, ...extra }, bytes));
}

/** Connects `n` clients with bounded concurrency. */
export async function connectAll(specs, concurrency = 50) {
  const out = new Array(specs.length);
  let next = 0;
  async function worker() {
    while (next < specs.length) {
      const i = next++;
      const c = new MqttConn(specs[i]);
      await c.connect();
      out[i] = c;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, specs.length) }, worker));
  return out;
}

/**
 * pubs: [{ conn, topic }], subs: MqttConn[] (already subscribed; every message
 * published is expected at every subscriber).
 */
export async function saturate(t, ctx, { pubs, subs, payload, window, batch, warmupMs, durationMs, stallMs = 300, maxQueuedBytes = 1 << 20 }) {
  for (const p of pubs) {
    const frame = p.conn.frameFor(publishPacket(p.topic, payload));
    p.frameLen = frame.length;
    p.batchBuf = Buffer.concat(Array(batch).fill(frame));
  }
  let sent = 0;
  let writtenOff = 0;
  let stalls = 0;
  let stopped = false;
  let scheduled = false;
  let rr = 0;
  const minRecv = () => { let m = Infinity; for (const s of subs) if (s.received < m) m = s.received; return m; };

  const pump = () => {
    scheduled = false;
    if (stopped) return;
    let inflight = sent - writtenOff - minRecv();
    let blocked = 0;
    while (inflight + batch <= window && blocked < pubs.length) {
      const p = pubs[rr]; rr = (rr + 1) % pubs.length;
      if (p.conn.closed || p.conn.writeQueued > maxQueuedBytes) { blocked++; continue; }
      blocked = 0;
      p.conn.writeRaw(p.batchBuf);
      sent += batch; inflight += batch;
    }
  };
  const kick = () => { if (!scheduled && !stopped) { scheduled = true; setImmediate(pump); } };
  for (const s of subs) s.onPublish = kick;
  for (const p of pubs) p.conn.sock.on('drain', kick);

  let lastMin = -1; let lastProgress = performance.now();
  const watchdog = setInterval(() => {
    const m = minRecv();
    const now = performance.now();
    if (m !== lastMin) { lastMin = m; lastProgress = now; return; }
    if (now - lastProgress > stallMs && sent - writtenOff - m > 0) {
      writtenOff = sent - m; stalls++; lastProgress = now; kick();
    }
  }, 50);

  const totalRecv = () => subs.reduce((a, s) => a + s.received, 0);
  kick();
  await sleep(warmupMs);
  await ctx.profileStart();
  const totalFrames = () => subs.reduce((a, s) => a + s.wsFrames, 0);
  const totalReads = () => subs.reduce((a, s) => a + s.reads, 0);
  const s0 = cpuSnapshot(t); const r0 = totalRecv(); const p0 = sent; const f0 = totalFrames(); const rd0 = totalReads();
  await sleep(durationMs);
  const s1 = cpuSnapshot(t); const r1 = totalRecv(); const p1 = sent; const f1 = totalFrames(); const rd1 = totalReads();
  const profile = await ctx.profileStop();
  stopped = true;
  clearInterval(watchdog);
  // let queued messages arrive before counting losses (bounded: 5 s)
  for (let i = 0, last = -1, still = 0; i < 50 && still < 3; i++) {
    await sleep(100);
    const r = totalRecv();
    still = r === last ? still + 1 : 0; last = r;
  }
  const closedPubs = pubs.filter((p) => p.conn.closed).length;
  const closedSubs = subs.filter((s) => s.closed).length;
  const lost = sent * subs.length - totalRecv();
  const d = cpuDelta(s0, s1);
  const deliveries = r1 - r0;
  const row = {
    wall: d.wall,
    pubPerS: (p1 - p0) / d.wall,
    delivPerS: deliveries / d.wall,
    brokerCpu: d.brokerCpu,
    brokerUtil: (100 * d.brokerCpu) / d.wall,
    delivPerCpuS: deliveries / d.brokerCpu,
    redisCpu: d.redisCpu ?? undefined,
    delivPerCpuSInclRedis: d.redisCpu !== null ? deliveries / (d.brokerCpu + d.redisCpu) : undefined,
    genCpu: d.genCpu,
    genUtil: (100 * d.genCpu) / d.wall,
    rssMB: s1.mem ? s1.mem.rss / 1048576 : NaN,
    lostPct: sent ? (100 * Math.max(0, lost)) / (sent * subs.length) : 0,
    stalls,
    delivPerRead: rd1 > rd0 ? deliveries / (rd1 - rd0) : undefined,
    framesPerDeliv: subs[0].transport === 'ws' && deliveries ? (f1 - f0) / deliveries : undefined,
    notes: [],
    profile,
  };
  if (closedPubs || closedSubs) {
    const why = [...pubs.map((p) => p.conn), ...subs].filter((c) => c.closed).slice(0, 3).map((c) => `${c.o.clientId}: ${c.closeInfo}`);
    row.notes.push(`${closedPubs} publishers and ${closedSubs} subscribers were disconnected during the run (${why.join('; ')})`);
  }
  if (row.genUtil > 90) row.notes.push(`load generator core at ${row.genUtil.toFixed(0)}%: the generator may be the bottleneck`);
  log(`${t.name}: ${Math.round(row.delivPerS)} deliveries/s, broker ${row.brokerUtil.toFixed(0)}% core (sys ${(100 * d.brokerSys / d.wall).toFixed(0)}%), gen ${row.genUtil.toFixed(0)}% (sys ${(100 * d.genSys / d.wall).toFixed(0)}%), lost ${row.lostPct.toFixed(2)}%, stalls ${stalls}`);
  return row;
}

export const THROUGHPUT_COLUMNS = [
  { key: 'pubPerS', label: 'pub/s', ratio: true },
  { key: 'delivPerS', label: 'deliv/s', ratio: true },
  { key: 'brokerCpu', label: 'brokerCPU_s' },
  { key: 'brokerUtil', label: 'broker%', digits: 0 },
  { key: 'delivPerCpuS', label: 'deliv/brokerCPU_s', ratio: true },
  { key: 'redisCpu', label: 'redisCPU_s' },
  { key: 'genCpu', label: 'genCPU_s' },
  { key: 'genUtil', label: 'gen%', digits: 0 },
  { key: 'rssMB', label: 'brokerRSS_MB', digits: 0 },
  { key: 'lostPct', label: 'lost%' },
  { key: 'stalls', label: 'stalls' },
  { key: 'framesPerDeliv', label: 'wsFrames/deliv' },
  { key: 'delivPerRead', label: 'deliv/sub_read', digits: 1 },
];
