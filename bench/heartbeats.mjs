// Heartbeat ingest: devices -> broker -> `heartbeats` queue -> device service -> Redis state.
//   node bench/heartbeats.mjs [--devices 10000] [--rate 10000] [--duration 20] [--warmup 5]
// Every device is a real WebSocket connection with its own EdDSA token, publishing its own
// devices/<id>/heartbeat (QoS 0) on an open-loop schedule: `rate` heartbeats per second in all,
// spread evenly over the devices (each device beats every devices/rate seconds).
// --via queue leaves the WebSocket connections out: this process enqueues the heartbeats with
// the broker's own IngressRouter (the code the broker runs after decoding a publish), for more
// devices than one process may hold sockets for (each process here may open 20,000 files, a
// hard limit); its CPU then stands for the broker's enqueue work, not the broker's whole. The broker
// (`fleetwire broker`) and the device service (`fleetwire device-service`, publishing through
// the broker with DEVICE_BROKER_URL) are separate processes on one Redis, so each one's CPU is
// measured on its own.
//
// Reported, over the measured window (after warm-up):
//   offered/s     heartbeats the generator sent per second
//   applied/s     heartbeats the device service wrote to Redis per second (its own counter)
//   backlog       jobs waiting in the queue at the end of the window (grows when ingest falls behind)
//   lag p50/p99   received_at (the broker) -> state written (the device service), from the
//                 service's histogram fleetwire_device_heartbeat_lag_seconds, interpolated
//                 within a bucket as Prometheus' histogram_quantile does
//   CPU           seconds of CPU per wall second of the broker, the device service, redis-server
//                 and the load generator (1.0 = one core)
//   memory        Redis used_memory per tracked device: after every device has state, minus
//                 before any heartbeat (device records and tokens already in), / devices
import { Redis } from 'ioredis';
import { parseArgs, usage, log, sleep, freePort, procCpuSeconds, selfCpuSeconds, raiseFileLimit } from './lib/util.mjs';
import { startTarget, startDeviceService, BROKER_CPU, LOAD_CPU } from './lib/targets.mjs';
import { setupProcess, hardDeadline } from './lib/runner.mjs';
import { MqttConn, loopbackAddress, publishPacket } from './lib/conn.mjs';
import { openInspector, topSelf, selfByArea } from './lib/inspector.mjs';
import { IngressRouter } from '@fleetwire/broker';

const D = { devices: 10000, rate: 10000, duration: 20, warmup: 5, ips: 64, concurrency: 50, serviceCpu: 'any', drainS: 30, profile: false, via: 'broker' };
const a = parseArgs(D);
if (a.help) {
  console.log(usage('heartbeats', 'heartbeat ingest: broker -> queue -> device service -> Redis, open-loop at --rate', D));
  console.log('  --service-cpu any|0|1: where the device service runs (default: not pinned; the broker is on core 0, redis and the generator on core 1)');
  console.log('  --profile: CPU profiles of the broker and the device service over the window (the figures of such a run are not the ones to quote)');
  process.exit(0);
}
setupProcess();
hardDeadline(600 + a.devices / 100);
if (!['broker', 'queue'].includes(a.via)) throw new Error('--via is broker or queue');
// Through the broker, this process and the broker (it inherits the limit) each hold a socket per device.
const files = raiseFileLimit(a.devices + 2000);
if (a.via === 'broker' && files.soft < a.devices + 2000) {
  throw new Error(`--devices ${a.devices} needs ${a.devices + 2000} open files; the limit is ${files.soft} (hard ${files.hard}): use --via queue`);
}

const ids = Array.from({ length: a.devices }, (_, i) => `hb-${String(i).padStart(6, '0')}`);
const t = await startTarget('fleetwire', { env: { LOG_LEVEL: 'warn' }, inspect: a.profile });
let service = null;
const conns = [];
try {
  log(`registering ${ids.length} devices and minting their tokens`);
  await t.registerDevices(ids);
  const redis = new Redis(t.redisUrl, { maxRetriesPerRequest: 1 });

  const serviceInspect = a.profile ? await freePort() : null;
  service = await startDeviceService(t, { inspect: serviceInspect, cpu: a.serviceCpu });
  const metricsUrl = `${service.url}/metrics`;

  const router = a.via === 'queue' ? new IngressRouter(new Redis(t.redisUrl, { maxRetriesPerRequest: null }), 'bench', { timeoutMs: 2000, maxTimeoutMs: 30000, quotaPerMin: 600 }) : null;
  log(a.via === 'queue' ? `enqueueing for ${ids.length} devices from this process` : `connecting ${ids.length} devices (broker on core ${BROKER_CPU}, redis and generator on core ${LOAD_CPU}, device service on ${a.serviceCpu})`);
  const specs = a.via === 'queue' ? [] : await Promise.all(ids.map((id) => t.clientOpts({ kind: 'device', id }, 'ws')));
  let next = 0; let connectRetries = 0;
  await Promise.all(Array.from({ length: a.concurrency }, async () => {
    while (next < specs.length) {
      const i = next++;
      // A connect refused under the connect storm is tried again (counted), not the end of the run.
      for (let attempt = 1; ; attempt++) {
        const c = new MqttConn({ ...specs[i], keepalive: 600, localAddress: loopbackAddress(i % a.ips, 4), timeoutMs: 20000 });
        try {
          await c.connect();
          conns[i] = c;
          break;
        } catch (err) {
          if (attempt === 3) throw err;
          connectRetries++;
          await sleep(200);
        }
      }
    }
  }));
  if (connectRetries) log(`${connectRetries} connects were retried`);
  const memBefore = await usedMemory(redis);

  // Open loop: every 10 ms, the heartbeats due in that slice, round-robin over the devices.
  const seq = new Uint32Array(ids.length);
  const bootAt = Date.now();
  let sent = 0; let cursor = 0; let carry = 0;
  const perTick = a.rate / 100;
  let sending = true;
  const sender = (async () => {
    let tick = performance.now();
    while (sending) {
      carry += perTick;
      for (; carry >= 1; carry--) {
        const i = cursor; cursor = (cursor + 1) % ids.length;
        const hb = { seq: ++seq[i], uptime_s: Math.floor((Date.now() - bootAt) / 1000) + 60, rssi: -60, heap_free: 150000, fw: '1.0.0' };
        if (router) router.route('heartbeats', ids[i], 'heartbeat', hb).catch((err) => log(`enqueue failed: ${err.message}`));
        else conns[i].write(publishPacket(`devices/${ids[i]}/heartbeat`, Buffer.from(JSON.stringify(hb)), 0));
        sent++;
      }
      tick += 10;
      const wait = tick - performance.now();
      if (wait > 0) await sleep(wait); else if (wait < -1000) { tick = performance.now(); }
    }
  })();

  await sleep(a.warmup * 1000);
  const profilers = a.profile ? { broker: await openInspector(t.inspectPort), 'device service': await openInspector(serviceInspect) } : {};
  for (const p of Object.values(profilers)) await p.profileStart(500);
  const m0 = await scrape(metricsUrl);
  const c0 = cpu(); const sent0 = sent;
  await sleep(a.duration * 1000);
  const profiles = {};
  for (const [name, p] of Object.entries(profilers)) { profiles[name] = await p.profileStop(); p.close(); }
  const m1 = await scrape(metricsUrl);
  const c1 = cpu(); const sent1 = sent;
  const backlog = await redis.llen('fleetwire:heartbeats:wait');
  sending = false;
  await sender;

  // Let the queue drain, then every device has state: Redis memory per tracked device.
  const drainStart = Date.now();
  while (Date.now() - drainStart < a.drainS * 1000 && (await redis.llen('fleetwire:heartbeats:wait')) > 0) await sleep(200);
  await sleep(1000);
  const tracked = (await redis.zcard('fleetwire:devidx:last-seen'));
  const memAfter = await usedMemory(redis);
  // Exactly (MEMORY USAGE, SAMPLES 0): the device service's keys, and the registration's.
  const stateBytes = await sumBytes(redis, [
    ...ids.map((id) => `fleetwire:dstate:${id}`),
    'fleetwire:devidx:online', 'fleetwire:devidx:last-seen', 'fleetwire:silence-due', 'fleetwire:devidx:fw:1.0.0', 'fleetwire:devidx-values:fw',
  ]);
  const recordBytes = await sumBytes(redis, [...ids.map((id) => `fleetwire:device:${id}`), 'fleetwire:devices']);

  const wall = (c1.at - c0.at) / 1000;
  const applied = counter(m1, 'fleetwire_device_heartbeats_total', 'outcome="applied"') - counter(m0, 'fleetwire_device_heartbeats_total', 'outcome="applied"');
  const lag = histogramDelta(m0, m1, 'fleetwire_device_heartbeat_lag_seconds');
  const row = {
    via: a.via, devices: a.devices, offered_per_s: (sent1 - sent0) / wall, applied_per_s: applied / wall, backlog_at_end: backlog,
    lag_p50_ms: quantile(lag, 0.5) * 1000, lag_p99_ms: quantile(lag, 0.99) * 1000, lag_samples: lag.count,
    cpu_broker: (c1.broker - c0.broker) / wall, cpu_device_service: (c1.service - c0.service) / wall,
    cpu_redis: (c1.redis - c0.redis) / wall, cpu_generator: (c1.gen - c0.gen) / wall,
    tracked_devices: tracked, used_memory_growth_per_device: tracked ? (memAfter - memBefore) / tracked : null,
    state_bytes_per_device: tracked ? stateBytes / tracked : null, record_bytes_per_device: recordBytes / ids.length,
    drained_in_s: (Date.now() - drainStart) / 1000,
  };
  console.log(JSON.stringify(row));
  console.log([
    `heartbeat ingest via ${a.via}, ${a.devices} devices, offered ${row.offered_per_s.toFixed(0)}/s over ${wall.toFixed(1)} s:`,
    `  applied ${row.applied_per_s.toFixed(0)}/s, backlog at end ${backlog}, lag p50 ${row.lag_p50_ms.toFixed(1)} ms p99 ${row.lag_p99_ms.toFixed(1)} ms (${lag.count} samples)`,
    `  CPU (cores): broker ${row.cpu_broker.toFixed(2)}, device service ${row.cpu_device_service.toFixed(2)}, redis ${row.cpu_redis.toFixed(2)}, ${a.via === 'queue' ? 'generator (enqueueing with IngressRouter)' : 'generator'} ${row.cpu_generator.toFixed(2)}`,
    `  Redis memory per tracked device (${tracked} with state): its state and index entries ${row.state_bytes_per_device?.toFixed(0)} B, its registration (record, devices entry) ${row.record_bytes_per_device.toFixed(0)} B; used_memory grew ${row.used_memory_growth_per_device?.toFixed(0)} B per device over the run (queue jobs and allocator included)`,
  ].join('\n'));
  for (const [name, prof] of Object.entries(profiles)) {
    console.log(`\n--- CPU profile of the ${name} over the window ---\ntop self-time functions:`);
    for (const f of topSelf(prof, 15)) console.log(`  ${f.pct.toFixed(1).padStart(5)}%  ${f.fn}`);
    console.log('self time by package/area:');
    for (const x of selfByArea(prof).slice(0, 12)) console.log(`  ${x.pct.toFixed(1).padStart(5)}%  ${x.area}`);
  }
  // Every device drops at once (a network cut): the broker must live through the burst of
  // disconnects and presence messages.
  if (conns.length) {
    for (const c of conns) c?.destroy();
    conns.length = 0;
    await sleep(3000);
    console.log(`  broker after all ${a.devices} devices dropped at once: ${t.alive ? 'alive' : `DEAD (${t.exitInfo()}): ${t.stderrTail(3)}`}`);
  }
  redis.disconnect();
  await router?.close();
} finally {
  for (const c of conns) c?.destroy();
  await service?.stop();
  await t.stop();
}
process.exit(0);

function cpu() {
  return { at: performance.now(), broker: procCpuSeconds(t.pid), service: procCpuSeconds(service.pid), redis: procCpuSeconds(t.redisPid), gen: selfCpuSeconds() };
}

/** MEMORY USAGE (exact: SAMPLES 0) summed over `keys`. */
async function sumBytes(redis, keys) {
  let total = 0;
  for (let i = 0; i < keys.length; i += 1000) {
    const p = redis.pipeline();
    for (const k of keys.slice(i, i + 1000)) p.memory('USAGE', k, 'SAMPLES', '0');
    for (const [, bytes] of (await p.exec()) ?? []) total += Number(bytes) || 0;
  }
  return total;
}

async function usedMemory(redis) {
  return Number(/used_memory:(\d+)/.exec(await redis.info('memory'))[1]);
}

async function scrape(url) {
  return (await fetch(url)).text();
}

function counter(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** The histogram's buckets over the window: [{le, count}] cumulative, and the sample count. */
function histogramDelta(before, after, name) {
  const buckets = (text) => new Map(text.split('\n').filter((l) => l.startsWith(`${name}_bucket{`))
    .map((l) => [Number(/le="([^"]+)"/.exec(l)[1].replace('+Inf', 'Infinity')), Number(l.split(' ').pop())]));
  const b0 = buckets(before); const b1 = buckets(after);
  const out = [...b1].map(([le, n]) => ({ le, count: n - (b0.get(le) ?? 0) })).sort((x, y) => x.le - y.le);
  return { buckets: out, count: out.length ? out[out.length - 1].count : 0 };
}

/** Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank. */
function quantile(h, q) {
  if (!h.count) return NaN;
  const rank = q * h.count;
  let prevLe = 0; let prevCount = 0;
  for (const { le, count } of h.buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((rank - prevCount) / Math.max(1, count - prevCount));
    }
    prevLe = le; prevCount = count;
  }
  return prevLe;
}
