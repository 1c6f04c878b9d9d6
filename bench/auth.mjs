// Auth service: login latency and throughput at production argon2id parameters,
// the cost of a rate-limited rejection next to a hashed login, and the
// API-key -> device-token exchange rate.
//   node bench/auth.mjs [--logins 200] [--concurrency 4] [--seconds 5] [--devices 500]
// The service (`fleetwire auth-service`, NODE_ENV=production) is pinned to
// core BENCH_BROKER_CPU, Redis and this load generator to BENCH_LOAD_CPU.
// Server cost is read from /proc (utime+stime of the service process, all threads).
import http from 'node:http';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { FLEETWIRE_MAIN, BROKER_CPU, LOAD_CPU } from './lib/targets.mjs';
import { pinnedProcesses } from './lib/pinned.mjs';
import { parseArgs, usage, freePort, waitForPort, procCpuSplit, pinSelf, summarize, fmt, sleep, log } from './lib/util.mjs';

const D = { logins: 200, concurrency: 4, seconds: 5, devices: 500, exchangeConcurrency: 32 };
const a = parseArgs(D);
if (a.help) { console.log(usage('auth', 'login latency, rate-limited rejections, device-token exchanges', D)); process.exit(0); }
pinSelf(LOAD_CPU);

const { dataDir, pinned, redis } = pinnedProcesses('auth');
setTimeout(() => { console.error('bench/auth.mjs: hard deadline reached'); process.exit(2); }, (120 + 4 * a.seconds) * 1000).unref();

const redisUrl = await redis(LOAD_CPU);
const port = await freePort();
const ADMIN = { email: 'bench-admin@example.com', password: 'bench-admin-passphrase' };
const server = pinned(BROKER_CPU, process.execPath, [FLEETWIRE_MAIN, 'auth-service'], {
  NODE_ENV: 'production', LOG_LEVEL: 'warn', PORT: String(port), HOST: '127.0.0.1',
  REDIS_URL: redisUrl, FLEETWIRE_DATA_DIR: dataDir, TRUSTED_PROXIES: '127.0.0.1',
  FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password,
  // Per-IP limit low (the flood comes from one address); hashed logins come from distinct addresses.
  LOGIN_PER_IP: '5', LOGIN_PER_ACCOUNT: '100000000', LOCKOUT_FAILURES: '100000000',
}, 'inherit');
await waitForPort(port, 20_000, () => server.exitCode !== null);

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
function post(path, body, headers = {}) {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

let ipSeq = 0;
const nextIp = () => { ipSeq++; return `10.${(ipSeq >> 16) & 255}.${(ipSeq >> 8) & 255}.${ipSeq & 255}`; };
const login = (ip = nextIp()) => post('/v1/auth/login', ADMIN, { 'x-forwarded-for': ip });

/** Runs `fn` from `concurrency` loops until `count` calls or `seconds` pass; returns latencies (ms) and server CPU. */
async function drive(fn, { count = Infinity, seconds = Infinity, concurrency = 1, expect }) {
  const lat = [];
  let done = 0;
  let bad = 0;
  const stopAt = Date.now() + seconds * 1000;
  const cpu0 = procCpuSplit(server.pid);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (done < count && Date.now() < stopAt) {
      done++;
      const s = performance.now();
      const res = await fn();
      lat.push(performance.now() - s);
      if (res.status !== expect) bad++;
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  const cpu1 = procCpuSplit(server.pid);
  const cpu = cpu1.user + cpu1.sys - cpu0.user - cpu0.sys;
  const sysPerReqMs = ((cpu1.sys - cpu0.sys) * 1000) / lat.length;
  return { n: lat.length, bad, wall, rate: lat.length / wall, cpuPerReqMs: (cpu * 1000) / lat.length, sysPerReqMs, ...summarize(lat) };
}

// Warm-up: JIT, the dummy hash, Redis connections.
for (let i = 0; i < 10; i++) await login();

log('login latency, one at a time');
const seq = await drive(() => login(), { count: a.logins, expect: 200 });
log(`login throughput, ${a.concurrency} concurrent`);
const par = await drive(() => login(), { seconds: a.seconds, concurrency: a.concurrency, expect: 200 });

log('rate-limited rejections from one address');
const floodIp = '10.255.255.1';
for (let i = 0; i < 5; i++) await login(floodIp); // fill its window
const flood = await drive(() => login(floodIp), { seconds: a.seconds, concurrency: 16, expect: 429 });

log(`registering ${a.devices} devices`);
const access = JSON.parse((await login()).body).access_token;
const keys = [];
for (let i = 0; i < a.devices; i++) {
  const res = await post('/v1/devices', { type: 'bench' }, { authorization: `Bearer ${access}` });
  keys.push(JSON.parse(res.body).api_key);
}
let k = 0;
const exchange = () => post('/v1/devices/token', { api_key: keys[k++ % keys.length] });
for (let i = 0; i < 200; i++) await exchange();
log(`device-token exchanges, ${a.exchangeConcurrency} concurrent`);
const ex = await drive(exchange, { seconds: a.seconds, concurrency: a.exchangeConcurrency, expect: 200 });

// The floor: argon2id verification alone at the same parameters, on the same core, in this run.
log('argon2id verify alone (baseline)');
const HASH_ALONE = `
  const argon2 = require('argon2');
  (async () => {
    const o = { type: argon2.argon2id, memoryCost: 19456, timeCost: 2, parallelism: 1 };
    const h = await argon2.hash('bench-admin-passphrase', o);
    const lat = [];
    for (let i = 0; i < ${a.logins}; i++) { const s = performance.now(); await argon2.verify(h, 'bench-admin-passphrase'); lat.push(performance.now() - s); }
    lat.sort((x, y) => x - y);
    console.log(JSON.stringify({ p50: lat[Math.floor(lat.length / 2)], p99: lat[Math.min(lat.length - 1, Math.ceil(lat.length * 0.99) - 1)] }));
  })();`;
const alone = await new Promise((resolve) => {
  const child = spawn('taskset', ['-c', String(BROKER_CPU), process.execPath, '-e', HASH_ALONE], { cwd: join(FLEETWIRE_MAIN, '..', '..', '..', 'auth-service') });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.on('close', () => resolve(JSON.parse(out)));
});

const row = (name, r) => `${name.padEnd(34)} ${String(r.n).padStart(7)} ${String(r.bad).padStart(5)} ${fmt(r.rate).padStart(9)} ${fmt(r.p50).padStart(8)} ${fmt(r.p99).padStart(8)} ${fmt(r.cpuPerReqMs, 3).padStart(12)} ${fmt(r.sysPerReqMs, 3).padStart(12)}`;
console.log('\n# auth service (NODE_ENV=production: argon2id m=19456 KiB, t=2, p=1), service pinned to one core');
console.log(`${'scenario'.padEnd(34)} ${'n'.padStart(7)} ${'bad'.padStart(5)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'CPU ms/req'.padStart(12)} ${'of it sys'.padStart(12)}`);
console.log(`${'argon2id verify alone (no HTTP)'.padEnd(34)} ${String(a.logins).padStart(7)} ${'0'.padStart(5)} ${'-'.padStart(9)} ${fmt(alone.p50).padStart(8)} ${fmt(alone.p99).padStart(8)}`);
console.log(row('login, sequential', seq));
console.log(row(`login, ${a.concurrency} concurrent`, par));
console.log(row('rate-limited login (429)', flood));
console.log(row(`device-token exchange, ${a.exchangeConcurrency} conc.`, ex));
console.log(`\nrejection vs hashed login, server CPU per request: ${fmt(par.cpuPerReqMs / flood.cpuPerReqMs, 1)}x cheaper`);
console.log(`login p50 above the hash alone: ${fmt(seq.p50 - alone.p50)} ms`);
console.log(`targets: login p50 <= 25 ms (${fmt(seq.p50)} ms); rejection >= 100x cheaper (${fmt(par.cpuPerReqMs / flood.cpuPerReqMs, 1)}x); exchanges > 2,000/s (${fmt(ex.rate)}/s)`);
agent.destroy();
server.kill('SIGTERM');
await sleep(300);
process.exit(0);
