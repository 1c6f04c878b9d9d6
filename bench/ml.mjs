// ML inference round trip: device -> broker -> `ml-infer` queue -> Python worker -> ml-bridge
// -> broker -> device, timed at the device from its PUBLISH to the answer with its cid.
//   node bench/ml.mjs --mode steady [--rate 500] [--workers 1]   latency at a steady open-loop rate
//   node bench/ml.mjs --mode max [--window 256] [--workers 1|2]  most answers/s with --window requests in flight
//   node bench/ml.mjs --mode bare [--rate 500 | --max]           the same harness on a bare BullMQ Node-to-Node
//                                                                 round trip (Queue.add -> Worker in another process
//                                                                 -> QueueEvents 'completed'), for comparison
// The broker (`fleetwire broker`) and the bridge (`fleetwire ml-bridge`) are separate processes on one
// Redis; the bridge starts --workers Python workers. Nothing is pinned to a core (--pin to pin the broker
// to core 0 and Redis and this generator to core 1, as the broker benchmarks do): the round trip crosses
// five processes, and with the broker's pinning it measured about a third fewer answers/s at most
// (1,950-2,060 against 2,945 with one worker), as Redis and the worker queued behind each other. Devices are real WebSocket connections with their own tokens, each subscribed to its
// ml/result (QoS 1) and sending QoS 1 requests round-robin, one 4-reading row each (`anomaly` model).
//
// Reported over the measured window (after warm-up):
//   answered/s   answers received per second; ok / errors by code; missing = no answer 10 s after the run
//   p50/p90/p99  device-side round trip in ms
//   CPU          seconds of CPU per wall second of the broker, the bridge, each worker, redis-server and
//                this generator (1.0 = one core)
//   --stages     also where the time goes, medians over the last 1,000 completed jobs (Unix ms, so
//                1 ms resolution): device publish -> broker received_at -> job added -> taken by a
//                worker (processedOn) -> finished (finishedOn) -> answer at the device
//   --profile    also CPU profiles of the broker and the bridge over the window (top functions and
//                packages by self time; the figures of such a run are not the ones to quote)
//   --layout up  run `fleetwire up` (broker, bridge and the other services in one process, as
//                `make run` does) instead of the broker and the bridge apart; the devices connect to it
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { parseArgs, usage, log, sleep, freePort, procCpuSeconds, selfCpuSeconds, summarize, fmt, raiseFileLimit } from './lib/util.mjs';
import { openInspector, topSelf, selfByArea } from './lib/inspector.mjs';
import { startTarget, startService, REPO, BROKER_CPU, LOAD_CPU } from './lib/targets.mjs';
import { setupProcess, hardDeadline } from './lib/runner.mjs';
import { MqttConn, loopbackAddress, publishPacket } from './lib/conn.mjs';

const D = { mode: 'steady', rate: 500, window: 256, workers: 1, devices: 50, duration: 20, warmup: 5, concurrency: 32, max: false, stages: false, profile: false, pin: false, layout: 'split' };
const a = parseArgs(D);
if (a.help) {
  console.log(usage('ml', 'ML round trip device -> broker -> queue -> Python -> bridge -> device (or --mode bare: BullMQ Node to Node)', D));
  process.exit(0);
}
if (!['steady', 'max', 'bare'].includes(a.mode)) throw new Error('--mode is steady, max or bare');
const cpus = a.pin ? { brokerCpu: BROKER_CPU, redisCpu: LOAD_CPU } : { brokerCpu: '0-1', redisCpu: '0-1' };
setupProcess({ pinTo: a.pin ? LOAD_CPU : '0-1' });
hardDeadline(300 + a.duration * 2);
raiseFileLimit(a.devices + 1000);

const INPUT = [[21.5, 40.2, 0.02, 1.3]];
const closedLoop = a.mode === 'max' || (a.mode === 'bare' && a.max);

/** Sends requests (open loop at --rate, or keeping --window in flight) and times their answers. */
class Load {
  constructor(send) {
    this.send = send; // (cid) => void
    this.sentAt = new Map();
    this.seq = 0;
    this.measuring = false;
    this.samples = [];
    this.outcomes = new Map();
    this.answered = 0;
    this.sent = 0;
    this.wall = new Map(); // cid -> device-side Unix ms of send and answer (--stages)
  }

  fire() {
    const cid = `b${this.seq++}`;
    this.sentAt.set(cid, { t: performance.now(), wall: Date.now(), measured: this.measuring });
    this.sent++;
    this.send(cid);
  }

  answer(cid, outcome) {
    const s = this.sentAt.get(cid);
    if (!s) return;
    this.sentAt.delete(cid);
    if (a.stages) this.wall.set(cid, { sent: s.wall, answered: Date.now() });
    if (s.measured) {
      this.samples.push(performance.now() - s.t);
      this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1);
      this.answered++;
    }
    if (closedLoop && !this.stopped) this.fire();
  }

  start() {
    if (closedLoop) {
      for (let i = 0; i < a.window; i++) this.fire();
      return;
    }
    const t0 = performance.now();
    let due = 0;
    this.timer = setInterval(() => {
      const target = Math.floor(((performance.now() - t0) / 1000) * a.rate);
      while (due < target) { this.fire(); due++; }
    }, 1);
  }

  stop() { this.stopped = true; clearInterval(this.timer); }

  measuredMissing() { return [...this.sentAt.values()].filter((s) => s.measured).length; }
}

function cpuOf(pids) {
  return Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, pid === 'self' ? selfCpuSeconds() : procCpuSeconds(pid)]));
}

function childPids(pid) {
  try { return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number); } catch { return []; }
}

async function waitReady(url, timeoutMs = 30000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${url}/readyz`).catch(() => null);
    if (res?.ok) return;
    if (Date.now() > until) throw new Error(`${url}/readyz not ready: ${res ? await res.text() : 'no answer'}`);
    await sleep(200);
  }
}

async function measure(load, pids, profilers = {}) {
  load.start();
  await sleep(a.warmup * 1000);
  for (const p of Object.values(profilers)) await p.profileStart(500);
  load.measuring = true;
  const c0 = cpuOf(pids);
  const w0 = performance.now();
  await sleep(a.duration * 1000);
  load.measuring = false;
  const wall = (performance.now() - w0) / 1000;
  const c1 = cpuOf(pids);
  for (const [name, p] of Object.entries(profilers)) {
    const prof = await p.profileStop();
    p.close();
    console.log(`\n${name}: top functions by self time`);
    for (const f of topSelf(prof, 15)) console.log(`  ${f.pct.toFixed(1).padStart(5)}%  ${f.fn}`);
    console.log(`${name}: self time by package`);
    for (const x of selfByArea(prof).slice(0, 12)) console.log(`  ${x.pct.toFixed(1).padStart(5)}%  ${x.area}`);
  }
  load.stop();
  const drainUntil = Date.now() + 10_000;
  while (load.measuredMissing() > 0 && Date.now() < drainUntil) await sleep(100);
  const lat = summarize(load.samples);
  const cpu = Object.fromEntries(Object.keys(pids).map((k) => [k, c0[k] === null || c1[k] === null ? null : (c1[k] - c0[k]) / wall]));
  return {
    mode: a.mode, workers: a.mode === 'bare' ? 'node' : a.workers, offered: closedLoop ? `window ${a.window}` : `${a.rate}/s`,
    answeredPerS: load.answered / wall, outcomes: Object.fromEntries(load.outcomes), missing: load.measuredMissing(),
    p50: lat.p50, p90: lat.p90, p99: lat.p99, max: lat.max, cpu,
  };
}

function report(r) {
  console.log(`\nML round trip (${r.mode}, workers ${r.workers}, ${r.offered}, ${a.duration} s measured):`);
  console.log(`  answered/s ${fmt(r.answeredPerS, 1)}   outcomes ${JSON.stringify(r.outcomes)}   missing ${r.missing}`);
  console.log(`  round trip ms: p50 ${fmt(r.p50, 2)}  p90 ${fmt(r.p90, 2)}  p99 ${fmt(r.p99, 2)}  max ${fmt(r.max, 1)}`);
  console.log(`  CPU (cores): ${Object.entries(r.cpu).map(([k, v]) => `${k} ${fmt(v, 2)}`).join('  ')}`);
  console.log(`RESULT ${JSON.stringify(r)}`);
}

async function runFleetwire() {
  const t = await startTarget('fleetwire', { env: { LOG_LEVEL: 'warn', ML_QUOTA_PER_MIN: '1000000000' }, inspect: a.profile, ...cpus });
  const bridgeInspect = a.profile ? await freePort() : null;
  let bridge = null;
  const conns = [];
  try {
    // --layout up: `fleetwire up` (broker, bridge and the other services in one process, as `make run`);
    // the devices connect to it, and the target's own broker stands idle.
    bridge = a.layout === 'up'
      ? await startService(t, 'up', { inspect: bridgeInspect, env: { ML_WORKERS: String(a.workers), ML_WORKER_CONCURRENCY: String(a.concurrency), ML_QUOTA_PER_MIN: '1000000000', BROKER_TCP_PORT: '0' } })
      : await startService(t, 'ml-bridge', {
        inspect: bridgeInspect,
        env: { ML_BROKER_URL: `ws://127.0.0.1:${t.wsPort}/mqtt`, ML_WORKERS: String(a.workers), ML_WORKER_CONCURRENCY: String(a.concurrency), ML_QUOTA_PER_MIN: '1000000000' },
      });
    await waitReady(bridge.url);
    const ids = Array.from({ length: a.devices }, (_, i) => `ml-${String(i).padStart(4, '0')}`);
    await t.registerDevices(ids);
    let load = null;
    for (const [i, id] of ids.entries()) {
      const c = new MqttConn({
        ...(await t.clientOpts({ kind: 'device', id }, 'ws')), ...(a.layout === 'up' ? { port: Number(new URL(bridge.url).port) } : {}),
        localAddress: loopbackAddress(i), keepalive: 60,
        onPublish(buf, s, e, b0) {
          const tl = buf.readUInt16BE(s);
          const off = s + 2 + tl + ((b0 & 6) !== 0 ? 2 : 0);
          const body = JSON.parse(buf.toString('utf8', off, e));
          load.answer(body.cid, body.ok ? 'ok' : body.error.code);
        },
      });
      await c.connect();
      await c.subscribe(`devices/${id}/ml/result`, 1);
      conns.push({ c, id, msgId: 1 });
    }
    let next = 0;
    load = new Load((cid) => {
      const d = conns[next++ % conns.length];
      d.msgId = d.msgId % 65535 + 1;
      d.c.write(publishPacket(`devices/${d.id}/ml/infer`, Buffer.from(JSON.stringify({ cid, model: 'anomaly', input: INPUT })), 1, d.msgId));
    });
    const workers = childPids(bridge.pid);
    if (workers.length !== a.workers) log(`warning: the bridge has ${workers.length} child processes, expected ${a.workers}`);
    const pids = { broker: t.pid, bridge: bridge.pid, ...Object.fromEntries(workers.map((p, i) => [`worker${i + 1}`, p])), redis: t.redisPid, generator: 'self' };
    const profilers = a.profile ? { broker: await openInspector(t.inspectPort), bridge: await openInspector(bridgeInspect) } : {};
    report(await measure(load, pids, profilers));
    if (a.stages) await reportStages(t.redisUrl, load.wall);
  } finally {
    for (const { c } of conns) c.destroy();
    await bridge?.stop();
    await t.stop();
  }
}

/** Medians of each leg, from the completed jobs BullMQ keeps (remove_on_complete) and the device's clock. */
async function reportStages(redisUrl, wall) {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('ml-infer', { connection, prefix: 'fleetwire' });
  const jobs = await queue.getJobs(['completed'], 0, 999);
  const legs = { 'device -> broker': [], 'broker -> queued': [], 'queued -> worker': [], 'worker compute+complete': [], 'completed -> device': [] };
  for (const job of jobs) {
    const w = wall.get(job.data.cid);
    if (!w || !job.processedOn || !job.finishedOn) continue;
    legs['device -> broker'].push(job.data.received_at - w.sent);
    legs['broker -> queued'].push(job.timestamp - job.data.received_at);
    legs['queued -> worker'].push(job.processedOn - job.timestamp);
    legs['worker compute+complete'].push(job.finishedOn - job.processedOn);
    legs['completed -> device'].push(w.answered - job.finishedOn);
  }
  // The slowest 1% of round trips, leg by leg: which leg makes the tail.
  const totals = legs['device -> broker'].map((_, i) => Object.values(legs).reduce((sum, v) => sum + v[i], 0));
  const slowest = totals.map((total, i) => [total, i]).sort((x, y) => y[0] - x[0]).slice(0, Math.max(1, Math.ceil(totals.length / 100))).map(([, i]) => i);
  console.log(`  stages, median (p99) ms over ${totals.length} jobs, and the median of each over the slowest 1%:`);
  for (const [leg, v] of Object.entries(legs)) {
    const st = summarize(v);
    console.log(`    ${leg.padEnd(26)} ${fmt(st.p50, 0)} (${fmt(st.p99, 0)})   slowest 1%: ${fmt(summarize(slowest.map((i) => v[i])).p50, 0)}`);
  }
  await queue.close();
  connection.disconnect();
}

/** The same harness with nothing but BullMQ: a Node worker process that answers at once. */
async function runBare() {
  const t = await startTarget('fleetwire', { env: { LOG_LEVEL: 'warn' }, ...cpus });
  const connection = new Redis(t.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('bare-rt', { connection, prefix: 'bench' });
  const events = new QueueEvents('bare-rt', { connection: { url: t.redisUrl }, prefix: 'bench' });
  const workerSrc = `import { Worker } from 'bullmq';
    new Worker('bare-rt', async (job) => ({ cid: job.data.cid, ok: true }), { connection: { url: ${JSON.stringify(t.redisUrl)}, maxRetriesPerRequest: null }, prefix: 'bench', concurrency: ${a.concurrency} });`;
  const worker = spawn(process.execPath, ['--input-type=module', '-e', workerSrc], { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'] });
  try {
    await events.waitUntilReady();
    const load = new Load((cid) => { queue.add('rt', { cid, input: INPUT }, { jobId: cid, removeOnComplete: 1000, removeOnFail: 5000 }); });
    events.on('completed', ({ jobId }) => load.answer(jobId, 'ok'));
    events.on('failed', ({ jobId }) => load.answer(jobId, 'failed'));
    await sleep(1000);
    report(await measure(load, { worker: worker.pid, redis: t.redisPid, generator: 'self' }));
  } finally {
    worker.kill('SIGTERM');
    await events.close();
    await queue.close();
    connection.disconnect();
    await t.stop();
  }
}

if (a.mode === 'bare') await runBare(); else await runFleetwire();
process.exit(0);
