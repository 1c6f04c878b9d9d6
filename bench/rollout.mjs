// OTA rollout: a signed image offered to N devices by the rollout engine, each lean device
// downloading it from the device service with Range requests and reporting its OTA states.
//   node bench/rollout.mjs [--devices 5000] [--image-kib 256] [--rate-per-min 100000] [--downloads 50]
// The broker (`fleetwire broker`) and the device service (`fleetwire device-service`, with
// DEVICE_BROKER_URL and OTA_PUBLIC_KEYS = a key generated here) are separate processes on one
// Redis. Devices are registered straight in Redis with `capabilities: ["chip:esp32"]` (what the
// engine reads), connected over WebSocket with their own tokens (MqttConn), and each publishes one
// heartbeat with fw 1.0.0; once every device's state holds it, an image (--image-kib, random bytes)
// signed for esp32 version 2.0.0 is uploaded with POST /v1/firmware and POST /v1/rollouts creates
// one wave of 100% over them at --rate-per-min (the API's maximum is 100,000 a minute).
// Each device, on its offer (devices/<id>/ota, QoS 1, PUBACKed by MqttConn): ota/status offered,
// downloading; GET /v1/firmware/<sha256> with its own token in two Range requests (bytes=0-<mid-1>,
// bytes=<mid>-), at most --downloads at once over the whole generator; SHA-256 checked; verifying,
// rebooting; a heartbeat with fw 2.0.0; success.
//
// Reported, from rollout creation to every device succeeded:
//   time          creation -> the engine's view counts `succeeded` = N
//   offers/s      offers received by the devices, first -> last offer
//   events/s      fleetwire_device_ota_events_total{outcome="applied"} delta / rollout time
//   download      bytes/s and Range requests/s over the rollout time (206 responses only counted)
//   CPU           cores of the broker, device service, redis-server, generator over the rollout
//   RSS           of the device service and the broker at the end (procMem)
//   bottleneck    the process whose CPU was nearest one core (none when all are under 0.7: then
//                 the engine's pacing or a serial path limits, not a core)
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { parseArgs, usage, log, sleep, procCpuSeconds, procMem, selfCpuSeconds, raiseFileLimit } from './lib/util.mjs';
import { startTarget, startDeviceService } from './lib/targets.mjs';
import { setupProcess, hardDeadline } from './lib/runner.mjs';
import { MqttConn, loopbackAddress, publishPacket } from './lib/conn.mjs';

const D = { devices: 5000, imageKib: 256, ratePerMin: 100000, downloads: 50, concurrency: 50, ips: 64, timeoutS: 300 };
const a = parseArgs(D);
if (a.help) {
  console.log(usage('rollout', 'OTA rollout to N lean devices: offers, OTA status events, Range downloads, CPU and memory', D));
  process.exit(0);
}
setupProcess();
hardDeadline(600 + a.devices / 50);
const files = raiseFileLimit(a.devices + 2000);
if (files.soft < a.devices + 2000) throw new Error(`--devices ${a.devices} needs ${a.devices + 2000} open files; the limit is ${files.soft} (hard ${files.hard})`);

const { signManifest, signToken, loadOrCreateKeySet } = await import('@fleetwire/common');
const otaKey = generateKeyPairSync('ed25519');
const otaPub = Buffer.from(otaKey.publicKey.export({ format: 'jwk' }).x, 'base64url').toString('base64url');
const VERSION = '2.0.0';
const ids = Array.from({ length: a.devices }, (_, i) => `ro-${String(i).padStart(6, '0')}`);
const t = await startTarget('fleetwire', { env: { LOG_LEVEL: 'warn' } });
let service = null;
const conns = [];
const agent = new http.Agent({ keepAlive: true, maxSockets: a.downloads });
try {
  log(`registering ${ids.length} devices (chip:esp32) and minting their tokens`);
  const redis = new Redis(t.redisUrl, { maxRetriesPerRequest: 1 });
  for (let i = 0; i < ids.length; i += 1000) {
    const p = redis.pipeline();
    for (const id of ids.slice(i, i + 1000)) p.hset(`fleetwire:device:${id}`, { status: 'active', created_at: String(Date.now()), capabilities: JSON.stringify(['chip:esp32']) }).zadd('fleetwire:devices', 'NX', Date.now(), id);
    await p.exec();
  }
  await t.registerDevices(ids);

  service = await startDeviceService(t, { env: { OTA_PUBLIC_KEYS: otaPub } });
  const base = service.url;
  // An admin's token (uploads need the admin role), signed with the stack's own key.
  const { signer } = await loadOrCreateKeySet(join(t.env.FLEETWIRE_DATA_DIR, 'keys'));
  const svcToken = await signToken(signer, { sub: 'bench-admin', typ: 'user', role: 'admin', ttlSeconds: 3600 });

  // The image, signed and uploaded.
  const img = randomBytes(a.imageKib * 1024);
  const sha256 = createHash('sha256').update(img).digest('hex');
  const manifest = signManifest({ version: VERSION, size: img.length, sha256, url: `/v1/firmware/${sha256}`, chip: 'esp32' }, otaKey.privateKey);
  const form = new FormData();
  form.append('manifest', JSON.stringify(manifest));
  form.append('image', new Blob([img], { type: 'application/octet-stream' }), 'fw.bin');
  const up = await fetch(`${base}/v1/firmware`, { method: 'POST', headers: { authorization: `Bearer ${svcToken}` }, body: form });
  if (up.status !== 201 && up.status !== 200) throw new Error(`upload: ${up.status} ${await up.text()}`);

  // Devices: connect, one heartbeat at 1.0.0 each.
  log(`connecting ${ids.length} devices`);
  const specs = await Promise.all(ids.map((id) => t.clientOpts({ kind: 'device', id }, 'ws')));
  const tokens = specs.map((s) => s.protocols[1].slice('auth.'.length));
  const st = { offers: 0, firstOffer: 0, lastOffer: 0, bytes: 0, ranges: 0, badRanges: 0, shaFail: 0, done: 0, errors: 0 };
  let active = 0; const waiting = [];
  const slot = () => (active < a.downloads ? (active++, Promise.resolve()) : new Promise((r) => waiting.push(r)));
  const release = () => { const w = waiting.shift(); if (w) w(); else active--; };
  const pub = (i, sub, obj, qos = 0) => conns[i].write(publishPacket(`devices/${ids[i]}/${sub}`, Buffer.from(JSON.stringify(obj)), qos));
  const hb = (i, fw, uptime) => pub(i, 'heartbeat', { seq: 1 + (fw === VERSION ? 1 : 0), uptime_s: uptime, rssi: -60, heap_free: 150000, fw });

  async function onOffer(i, msg) {
    const now = performance.now();
    st.offers++; st.firstOffer ||= now; st.lastOffer = now;
    const rollout = msg.rollout; const url = msg.manifest.url; const size = msg.manifest.size;
    const status = (state, progress) => pub(i, 'ota/status', { rollout, state, progress });
    status('offered', 0);
    status('downloading', 0);
    await slot();
    let got;
    try {
      const mid = Math.floor(size / 2);
      const p1 = await range(url, tokens[i], `bytes=0-${mid - 1}`);
      status('downloading', 50);
      const p2 = await range(url, tokens[i], `bytes=${mid}-`);
      got = Buffer.concat([p1, p2]);
    } finally { release(); }
    if (createHash('sha256').update(got).digest('hex') !== msg.manifest.sha256) { st.shaFail++; status('failed', 100); return; }
    status('verifying', 100);
    status('rebooting', 100);
    hb(i, VERSION, 1);
    status('success', 100);
    st.done++;
  }

  function range(path, token, spec) {
    return new Promise((resolve, reject) => {
      const req = http.get(`${base}${path}`, { agent, headers: { authorization: `Bearer ${token}`, range: spec } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          if (res.statusCode === 206) { st.ranges++; st.bytes += body.length; resolve(body); } else { st.badRanges++; reject(new Error(`GET ${path} ${spec}: ${res.statusCode} ${body.toString().slice(0, 200)}`)); }
        });
      });
      req.on('error', reject);
    });
  }

  let next = 0;
  await Promise.all(Array.from({ length: a.concurrency }, async () => {
    while (next < specs.length) {
      const i = next++;
      const c = new MqttConn({
        ...specs[i], keepalive: 600, localAddress: loopbackAddress(i % a.ips, 5), timeoutMs: 20000,
        onPublish: (buf, start, end, b0) => {
          const tl = buf.readUInt16BE(start);
          const topic = buf.toString('utf8', start + 2, start + 2 + tl);
          if (!topic.endsWith('/ota')) return;
          const payloadStart = start + 2 + tl + (((b0 >> 1) & 3) ? 2 : 0);
          const msg = JSON.parse(buf.toString('utf8', payloadStart, end));
          onOffer(i, msg).catch((err) => { st.errors++; if (st.errors <= 5) log(`device ${ids[i]}: ${err.message}`); });
        },
      });
      await c.connect();
      conns[i] = c;
      await c.subscribe(`devices/${ids[i]}/ota`, 1).catch(() => {}); // the broker may subscribe devices itself
      hb(i, '1.0.0', 100);
    }
  }));
  log('waiting for every device to report fw 1.0.0 and be online');
  const until = Date.now() + 60000;
  for (;;) {
    const p = redis.pipeline();
    for (const id of ids) p.hmget(`fleetwire:dstate:${id}`, 'fw', 'online');
    const rows = await p.exec();
    const ready = rows.filter(([, v]) => v[0] === '1.0.0' && v[1] === '1').length;
    if (ready === ids.length) break;
    if (Date.now() > until) throw new Error(`only ${ready}/${ids.length} devices have fw 1.0.0 and are online`);
    await sleep(500);
  }

  // The rollout.
  const metricsUrl = `${base}/metrics`;
  const ev0 = counter(await (await fetch(metricsUrl)).text(), 'fleetwire_device_ota_events_total', 'outcome="applied"');
  const c0 = cpu();
  const res = await fetch(`${base}/v1/rollouts`, {
    method: 'POST', headers: { authorization: `Bearer ${svcToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ firmware: sha256, selector: { ids }, rate_per_min: a.ratePerMin, confirm_window_s: 3600, waves: [{ percent: 100, hold_s: 0 }] }),
  });
  const created = await res.json();
  if (res.status !== 201) throw new Error(`POST /v1/rollouts: ${res.status} ${JSON.stringify(created)}`);
  log(`rollout ${created.id} created (${created.counts?.skipped ?? 0} skipped)`);
  let view;
  const deadline = Date.now() + a.timeoutS * 1000;
  for (;;) {
    view = await (await fetch(`${base}/v1/rollouts/${created.id}`, { headers: { authorization: `Bearer ${svcToken}` } })).json();
    if (view.counts.succeeded === ids.length || ['completed', 'aborted', 'cancelled'].includes(view.state)) break;
    if (Date.now() > deadline) throw new Error(`timed out: ${JSON.stringify(view.counts)}`);
    await sleep(100);
  }
  const c1 = cpu();
  const wall = (c1.at - c0.at) / 1000;
  await sleep(500);
  const ev1 = counter(await (await fetch(metricsUrl)).text(), 'fleetwire_device_ota_events_total', 'outcome="applied"');
  const cores = {
    broker: (c1.broker - c0.broker) / wall, device_service: (c1.service - c0.service) / wall,
    redis: (c1.redis - c0.redis) / wall, generator: (c1.gen - c0.gen) / wall,
  };
  // The process nearest one core; under 0.7 cores, none is CPU-bound (the pacing or a serial path is).
  const [nearest, nearestCores] = Object.entries(cores).sort((x, y) => Math.abs(1 - x[1]) - Math.abs(1 - y[1]))[0];
  const bottleneck = nearestCores >= 0.7 ? nearest : 'none (no process near one core)';
  const mem = { service: procMem(service.pid), broker: procMem(t.pid) };
  const offerSpan = (st.lastOffer - st.firstOffer) / 1000;
  const row = {
    devices: a.devices, image_bytes: img.length, state: view.state, succeeded: view.counts.succeeded, failed: view.counts.failed,
    rollout_s: wall, offers: st.offers, offers_per_s: offerSpan > 0 ? st.offers / offerSpan : null,
    ota_events_applied: ev1 - ev0, ota_events_per_s: (ev1 - ev0) / wall,
    download_bytes_per_s: st.bytes / wall, range_requests: st.ranges, range_requests_per_s: st.ranges / wall, bad_ranges: st.badRanges, sha_failures: st.shaFail, errors: st.errors,
    cpu_broker: cores.broker, cpu_device_service: cores.device_service, cpu_redis: cores.redis, cpu_generator: cores.generator,
    rss_device_service_mb: mem.service.rss / 1048576, rss_broker_mb: mem.broker.rss / 1048576,
    hwm_device_service_mb: mem.service.hwm / 1048576, hwm_broker_mb: mem.broker.hwm / 1048576, nearest_one_core: nearest, bottleneck,
  };
  console.log(JSON.stringify(row));
  console.log([
    `rollout of ${(img.length / 1024).toFixed(0)} KiB to ${a.devices} devices: ${view.state}, succeeded ${view.counts.succeeded}, in ${wall.toFixed(1)} s (rate_per_min ${a.ratePerMin}, ${a.downloads} downloads at once)`,
    `  offers ${row.offers_per_s?.toFixed(0)}/s (first -> last offer ${offerSpan.toFixed(1)} s), OTA status events applied ${row.ota_events_per_s.toFixed(0)}/s (${row.ota_events_applied})`,
    `  download ${(row.download_bytes_per_s / 1048576).toFixed(1)} MiB/s, ${row.range_requests_per_s.toFixed(0)} Range requests/s (${st.ranges}; refused ${st.badRanges}, bad sha ${st.shaFail}, errors ${st.errors})`,
    `  CPU (cores): broker ${cores.broker.toFixed(2)}, device service ${cores.device_service.toFixed(2)}, redis ${cores.redis.toFixed(2)}, generator ${cores.generator.toFixed(2)}; nearest one core: ${nearest}; CPU bottleneck: ${bottleneck}`,
    `  RSS at the end (peak): device service ${row.rss_device_service_mb.toFixed(0)} MiB (${row.hwm_device_service_mb.toFixed(0)}), broker ${row.rss_broker_mb.toFixed(0)} MiB (${row.hwm_broker_mb.toFixed(0)})`,
  ].join('\n'));
  redis.disconnect();
} finally {
  for (const c of conns) c?.destroy();
  agent.destroy();
  await service?.stop();
  await t.stop();
}
process.exit(0);

function cpu() {
  return { at: performance.now(), broker: procCpuSeconds(t.pid), service: procCpuSeconds(service.pid), redis: procCpuSeconds(t.redisPid), gen: selfCpuSeconds() };
}

function counter(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
}
