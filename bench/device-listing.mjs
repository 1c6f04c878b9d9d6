// Device listing: GET /v1/devices latency per filter at 100,000 devices, first pages and
// pages deep into the set (a cursor after the 90,000th device).
//   node bench/device-listing.mjs [--devices 100000] [--runs 3] [--requests 200] [--limit 100]
// The devices are written straight into Redis with the keys the services write: the record
// and its type, tag, location, revoked and maintenance indexes (auth service), the state hash
// and the firmware, online, silent and last-seen indexes (device service). The auth service
// (`fleetwire auth-service`, NODE_ENV=production) runs pinned to core BENCH_BROKER_CPU, Redis
// and this client to BENCH_LOAD_CPU. Requests go one at a time (latency, not throughput).
// Each run measures every scenario once; the table gives, per scenario, the median over the
// runs of p50 and p99 with their range. The index backfill the service runs at its first
// start (records from before the indexes) is timed over the same 100,000 records.
import http from 'node:http';
import { FLEETWIRE_MAIN, BROKER_CPU, LOAD_CPU } from './lib/targets.mjs';
import { pinnedProcesses } from './lib/pinned.mjs';
import { parseArgs, usage, freePort, waitForPort, pinSelf, summarize, fmt, sleep, log } from './lib/util.mjs';

const D = { devices: 100_000, runs: 3, requests: 200, limit: 100 };
const a = parseArgs(D);
if (a.help) { console.log(usage('device-listing', 'GET /v1/devices latency per filter over a seeded fleet', D)); process.exit(0); }
pinSelf(LOAD_CPU);
const { createRedis, redisKeys, encodeDeviceCursor } = await import('@fleetwire/common');

const { dataDir, pinned, redis } = pinnedProcesses('listing');
setTimeout(() => { console.error('bench/device-listing.mjs: hard deadline reached'); process.exit(2); }, (300 + a.runs * 120) * 1000).unref();

const redisUrl = await redis(LOAD_CPU);
const r = createRedis(redisUrl, { name: 'bench' });

// ---- the fleet --------------------------------------------------------------------------
const now = Date.now();
const base = now - 30 * 86_400_000; // registered over the last month, 1 ms apart at least
const FW = [['1.0.0', 0.4], ['1.1.0', 0.3], ['2.0.0', 0.2], ['2.1.0', 0.09], ['3.0.0-beta', 0.01]];
let seed = 42;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const pickFw = () => { let x = rand(); for (const [v, p] of FW) { if ((x -= p) < 0) return v; } return FW[0][0]; };
const idOf = (i) => `bench-${String(i).padStart(6, '0')}`;

/** Device i as the services would have written it; deterministic. */
function device(i) {
  const tags = [];
  if (rand() < 0.5) tags.push(`tag-${Math.floor(rand() * 50)}`);
  if (rand() < 0.3) tags.push(`tag-${50 + Math.floor(rand() * 50)}`);
  if (i % 2000 === 7) tags.push('rare');
  const seen = rand() < 0.95;
  const online = seen && rand() < 0.6;
  return {
    id: idOf(i), score: base + i * 25, type: `type-${i % 10}`, tags: [...new Set(tags)], location: `site-${Math.floor(rand() * 100)}`,
    revoked: rand() < 0.01, maintenance: rand() < 0.005, seen, online, silent: seen && !online && rand() < 0.05,
    fw: seen ? pickFw() : null, lastSeen: seen ? now - Math.floor(rand() * 86_400_000) : null,
  };
}

log(`seeding ${a.devices} devices into ${redisUrl}`);
const t0 = performance.now();
for (let start = 0; start < a.devices; start += 2000) {
  const p = r.pipeline();
  for (let i = start; i < Math.min(a.devices, start + 2000); i++) {
    const d = device(i);
    const s = d.score;
    // Auth service (lua/write-device.lua, lua/revoke-device.lua).
    p.hset(redisKeys.device(d.id), {
      status: d.revoked ? 'revoked' : 'active', type: d.type, location: d.location, tags: JSON.stringify(d.tags), capabilities: '[]',
      created_at: String(s), updated_at: String(s), key_created_at: String(s), created_by: 'bench',
      ...(d.revoked ? { revoked_at: String(s + 1) } : { api_key_digest: 'x'.repeat(43) }),
      ...(d.maintenance && !d.revoked ? { maintenance_until: String(now + 3_600_000) } : {}),
    });
    p.zadd(redisKeys.devices, s, d.id);
    p.zadd(redisKeys.deviceIndex('type', d.type), s, d.id);
    p.zadd(redisKeys.deviceIndex('location', d.location), s, d.id);
    for (const tag of d.tags) p.zadd(redisKeys.deviceIndex('tag', tag), s, d.id);
    if (d.revoked) p.zadd(redisKeys.deviceIndexRevoked, s, d.id);
    else if (d.maintenance) p.zadd(redisKeys.deviceMaintenance, now + 3_600_000, d.id);
    // Device service (heartbeats, presence, silence checker).
    if (d.seen) {
      p.hset(redisKeys.deviceState(d.id), { online: d.online ? '1' : '0', last_seen: String(d.lastSeen), fw: d.fw });
      p.zadd(redisKeys.deviceIndexLastSeen, d.lastSeen, d.id);
      p.zadd(redisKeys.deviceIndex('fw', d.fw), s, d.id);
      if (d.online) p.zadd(redisKeys.deviceIndexOnline, s, d.id);
      if (d.silent) p.zadd(redisKeys.deviceIndexSilent, s, d.id);
    }
  }
  await p.exec();
}
for (const kind of ['type', 'location', 'tag', 'fw']) {
  const values = new Set();
  for (const key of await r.keys(redisKeys.deviceIndex(kind, '*'))) values.add(key.slice(redisKeys.deviceIndex(kind, '').length));
  await r.sadd(redisKeys.deviceIndexValues(kind), ...values);
}
log(`seeded in ${fmt((performance.now() - t0) / 1000)} s; Redis used_memory ${(await r.info('memory')).match(/used_memory_human:(\S+)/)[1]}`);

// ---- the service; its first start backfills the indexes (no version marker yet) ---------
const port = await freePort();
const ADMIN = { email: 'bench-admin@example.com', password: 'bench-admin-passphrase' };
const startedAt = performance.now();
const server = pinned(BROKER_CPU, process.execPath, [FLEETWIRE_MAIN, 'auth-service'], {
  NODE_ENV: 'production', LOG_LEVEL: 'warn', PORT: String(port), HOST: '127.0.0.1',
  REDIS_URL: redisUrl, FLEETWIRE_DATA_DIR: dataDir, TRUSTED_PROXIES: '127.0.0.1',
  FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password,
}, 'inherit');
await waitForPort(port, 30_000, () => server.exitCode !== null);
const listeningS = (performance.now() - startedAt) / 1000;
while ((await r.get(redisKeys.deviceIndexVersion)) === null) await sleep(50);
const backfillS = (performance.now() - startedAt) / 1000;
log(`service listening after ${fmt(listeningS)} s; index backfill of ${a.devices} records done ${fmt(backfillS)} s after start`);

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
function request(method, path, body, headers = {}) {
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port, path, method, agent,
      headers: { ...(data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {}), ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(data);
  });
}
const token = JSON.parse((await request('POST', '/v1/auth/login', ADMIN, { 'x-forwarded-for': '10.0.0.1' })).body).access_token;
const auth = { authorization: `Bearer ${token}` };

// ---- scenarios ---------------------------------------------------------------------------
const deep = Math.min(90_000, Math.floor(a.devices * 0.9));
const deepCursor = encodeDeviceCursor({ order: 'registered', score: base + deep * 25, id: idOf(deep) });
const oldestSeen = Number((await r.zrange(redisKeys.deviceIndexLastSeen, 0, 0, 'WITHSCORES'))[1]);
const scenarios = [
  ['no filter', ''],
  ['type', 'type=type-3'],
  ['tag', 'tag=tag-7'],
  ['online=true', 'online=true'],
  ['firmware+online', 'firmware=2.0.0&online=true'],
  ['last_seen_after (last hour)', `last_seen_after=${now - 3_600_000}`],
  ['sparse: fw beta+type+online', 'firmware=3.0.0-beta&type=type-3&online=true'],
  ['sparse: tag rare+offline', 'tag=rare&online=false&status=active'],
  ['sparse, hits the bound: online+seen first 1 s', `online=true&status=active&last_seen_before=${oldestSeen + 1000}`],
  ['deep: no filter', `cursor=${deepCursor}`],
  ['deep: type', `type=type-3&cursor=${deepCursor}`],
  ['deep: online=true', `online=true&cursor=${deepCursor}`],
  ['deep: firmware+online', `firmware=2.0.0&online=true&cursor=${deepCursor}`],
];

async function measure(query) {
  const path = `/v1/devices?limit=${a.limit}${query ? `&${query}` : ''}`;
  let listed = 0;
  for (let i = 0; i < 10; i++) await request('GET', path, undefined, auth); // warm-up
  const lat = [];
  for (let i = 0; i < a.requests; i++) {
    const s = performance.now();
    const res = await request('GET', path, undefined, auth);
    lat.push(performance.now() - s);
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${res.body}`);
    listed = JSON.parse(res.body).devices.length;
  }
  return { ...summarize(lat), listed };
}

const results = new Map(scenarios.map(([name]) => [name, []]));
for (let run = 1; run <= a.runs; run++) {
  log(`run ${run}/${a.runs}`);
  for (const [name, query] of scenarios) results.get(name).push(await measure(query));
}

const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s[Math.floor((s.length - 1) / 2)]; };
const span = (xs, k) => `${fmt(median(xs.map((x) => x[k])))} (${fmt(Math.min(...xs.map((x) => x[k])))}–${fmt(Math.max(...xs.map((x) => x[k])))})`;
console.log(`\n# GET /v1/devices?limit=${a.limit}, ${a.devices.toLocaleString('en-US')} devices, ${a.requests} sequential requests per scenario and run, ${a.runs} runs`);
console.log('# latency in ms: median of the runs (range over the runs); "listed" = devices on the page');
console.log(`${'scenario'.padEnd(44)} ${'listed'.padStart(6)}  ${'p50 ms'.padEnd(22)} ${'p99 ms'.padEnd(22)}`);
for (const [name] of scenarios) {
  const xs = results.get(name);
  console.log(`${name.padEnd(44)} ${String(xs[0].listed).padStart(6)}  ${span(xs, 'p50').padEnd(22)} ${span(xs, 'p99').padEnd(22)}`);
}
console.log(`\nindex backfill at first start (in the background): ${a.devices.toLocaleString('en-US')} records indexed ${fmt(backfillS)} s after the service was started; it listened after ${fmt(listeningS)} s`);
agent.destroy();
r.disconnect();
server.kill('SIGTERM');
await sleep(300);
process.exit(0);
