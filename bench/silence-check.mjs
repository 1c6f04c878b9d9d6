// Silence-check cost with many tracked devices.
//   node bench/silence-check.mjs [--devices 100000] [--due-per-s 100] [--duration 20] [--burst 10000]
// Seeds `devices` tracked devices straight into Redis, as the auth service (device record)
// and the heartbeat consumer (state, time-ordered silence index) write them, with their
// silence deadlines spread so that `due-per-s` go silent every second. Then runs
// `fleetwire device-service` (with a `fleetwire broker` it publishes alerts through) and
// measures, over `duration` seconds:
//   steady    the checker's tick time (fleetwire_device_silence_check_seconds) and the device
//             service's CPU while `due-per-s` devices per second go silent out of `devices`
//   burst     `burst` devices going silent at the same moment (an outage): time until every
//             one of them is raised, and the CPU it took
import { Redis } from 'ioredis';
import { parseArgs, usage, log, sleep, procCpuSeconds } from './lib/util.mjs';
import { startTarget, startDeviceService } from './lib/targets.mjs';
import { setupProcess, hardDeadline } from './lib/runner.mjs';

const D = { devices: 100000, duePerS: 100, duration: 20, burst: 10000, checkMs: 1000 };
const a = parseArgs(D);
if (a.help) { console.log(usage('silence-check', 'cost of the silence checker with many tracked devices', D)); process.exit(0); }
setupProcess();
hardDeadline(600);

const t = await startTarget('fleetwire', { env: { LOG_LEVEL: 'warn' } });
let service = null;
try {
  const redis = new Redis(t.redisUrl, { maxRetriesPerRequest: 1 });
  const now = Date.now();
  // Deadlines: the steady trickle over the run, then far in the future for the rest.
  // The trickle ends before the burst falls due, so the burst is timed alone.
  const steadyCount = Math.min(a.devices - a.burst, a.duePerS * a.duration);
  log(`seeding ${a.devices} tracked devices (${steadyCount} going silent at ${a.duePerS}/s, ${a.burst} at once later)`);
  for (let i = 0; i < a.devices; i += 2000) {
    const p = redis.pipeline();
    for (let j = i; j < Math.min(a.devices, i + 2000); j++) {
      const id = `sc-${String(j).padStart(6, '0')}`;
      const created = now - 86_400_000 + j;
      p.hset(`fleetwire:device:${id}`, { status: 'active', created_at: String(created), type: 'sensor' });
      p.zadd('fleetwire:devices', created, id);
      const lastSeen = now - 5000;
      p.hset(`fleetwire:dstate:${id}`, { last_seen: String(lastSeen), fw: '1.0.0', threshold_ms: '15000' });
      p.zadd('fleetwire:devidx:last-seen', lastSeen, id);
      p.zadd('fleetwire:devidx:fw:1.0.0', created, id);
      // Steady devices fall due from 10 s after start; the burst together later; the rest in a day.
      const due = j < steadyCount ? now + 10_000 + Math.floor((j / a.duePerS) * 1000)
        : j < steadyCount + a.burst ? now + 10_000 + (a.duration + 5) * 1000
          : now + 86_400_000;
      p.zadd('fleetwire:silence-due', due, id);
    }
    await p.exec();
  }
  await redis.sadd('fleetwire:devidx-values:fw', '1.0.0');

  service = await startDeviceService(t, { env: { SILENCE_CHECK_MS: String(a.checkMs) } });
  const metrics = () => fetch(`${service.url}/metrics`).then((r) => r.text());

  await sleep(Math.max(0, now + 10_000 - Date.now()));
  const m0 = await metrics(); const cpu0 = procCpuSeconds(service.pid); const t0 = performance.now();
  await sleep(a.duration * 1000);
  const m1 = await metrics(); const cpu1 = procCpuSeconds(service.pid); const t1 = performance.now();
  const ticks = histogram(m1, 'fleetwire_device_silence_check_seconds');
  const ticks0 = histogram(m0, 'fleetwire_device_silence_check_seconds');
  const tickCount = ticks.count - ticks0.count;
  const steady = {
    tracked: a.devices, raised_per_s: (counter(m1, 'fleetwire_device_alerts_total', 'state="raised"') - counter(m0, 'fleetwire_device_alerts_total', 'state="raised"')) / ((t1 - t0) / 1000),
    ticks: tickCount, mean_tick_ms: tickCount ? ((ticks.sum - ticks0.sum) / tickCount) * 1000 : null,
    service_cpu_cores: (cpu1 - cpu0) / ((t1 - t0) / 1000),
  };

  // The burst falls due at start + 10 s + duration + 5 s.
  const burstAt = now + 10_000 + (a.duration + 5) * 1000;
  await sleep(Math.max(0, burstAt - Date.now() - 1000));
  const active0 = await redis.zcard('fleetwire:alerts:active');
  const cpuB0 = procCpuSeconds(service.pid);
  const wait0 = Date.now();
  while (Date.now() - wait0 < 120_000 && (await redis.zcard('fleetwire:alerts:active')) < active0 + a.burst) await sleep(50);
  const raisedIn = Date.now() - burstAt;
  const burst = { burst: a.burst, all_raised_after_ms: raisedIn, service_cpu_s: procCpuSeconds(service.pid) - cpuB0, raised: (await redis.zcard('fleetwire:alerts:active')) - active0 };
  console.log(JSON.stringify({ steady, burst }));
  console.log([
    `silence check, ${a.devices} tracked devices, check every ${a.checkMs} ms:`,
    `  steady: ${steady.raised_per_s.toFixed(0)} raised/s, ${steady.ticks} ticks, mean tick ${steady.mean_tick_ms?.toFixed(2)} ms, device service CPU ${(steady.service_cpu_cores * 100).toFixed(1)}% of a core`,
    `  burst: ${burst.raised} of ${a.burst} raised ${burst.all_raised_after_ms} ms after they fell due, ${burst.service_cpu_s.toFixed(2)} CPU s`,
  ].join('\n'));
  redis.disconnect();
} finally {
  await service?.stop();
  await t.stop();
}
process.exit(0);

function counter(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}

function histogram(text, name) {
  const value = (suffix) => Number(text.split('\n').find((l) => l.startsWith(`${name}_${suffix}`))?.split(' ').pop() ?? 0);
  return { count: value('count'), sum: value('sum') };
}
