// How many simulated devices one core sustains: fleetwire-sim (release build) pinned
// to one core runs N devices against `fleetwire up` pinned to the other; each device
// trades its API key for a token, connects and sends a QoS 1 heartbeat every
// --heartbeat-s seconds. Reported per N: devices connected, heartbeats acknowledged
// per second, the simulator's CPU share and RSS, and devices per core at that rate.
//   node bench/sim-capacity.mjs [--steps 500,1000,2000] [--heartbeat-s 5] [--seconds 20]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FLEETWIRE_MAIN, BROKER_CPU, LOAD_CPU, BENCH_LIMITS, REPO } from './lib/targets.mjs';
import { pinnedProcesses } from './lib/pinned.mjs';
import { parseArgs, usage, freePort, waitForPort, procCpuSeconds, procMem, fmt, sleep, log } from './lib/util.mjs';

const D = { steps: '500,1000,2000', heartbeatS: 5, seconds: 20 };
const a = parseArgs(D);
if (a.help) { console.log(usage('sim-capacity', 'simulated devices per core', D)); process.exit(0); }
const steps = String(a.steps).split(',').map(Number);
const maxN = Math.max(...steps);

log('building fleetwire-sim (release)');
execFileSync('cargo', ['build', '--release', '--quiet', '--manifest-path', join(REPO, 'firmware-esp32/Cargo.toml'), '-p', 'fleetwire-sim'], { stdio: 'inherit' });
const SIM = join(REPO, 'firmware-esp32/target/release/fleetwire-sim');

const { dataDir, pinned, redis } = pinnedProcesses('sim');
setTimeout(() => { console.error('bench/sim-capacity.mjs: hard deadline reached'); process.exit(2); }, (180 + steps.length * (a.seconds + 90)) * 1000).unref();

const redisUrl = await redis(BROKER_CPU);
const port = await freePort();
const ADMIN = { email: 'bench@example.com', password: 'bench-admin-passphrase' };
const server = pinned(BROKER_CPU, process.execPath, [FLEETWIRE_MAIN, 'up'], {
  ...BENCH_LIMITS, LOG_LEVEL: 'warn', PORT: String(port), HOST: '127.0.0.1', REDIS_URL: redisUrl,
  FLEETWIRE_DATA_DIR: dataDir, FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password,
});
await waitForPort(port, 20_000, () => server.exitCode !== null);
const base = `http://127.0.0.1:${port}`;
const post = async (path, body, token) => (await fetch(base + path, {
  method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body),
})).json();

const access = (await post('/v1/auth/login', ADMIN)).access_token;
log(`registering ${maxN} devices`);
const lines = [];
for (let i = 0; i < maxN; i += 50) {
  const batch = await Promise.all(Array.from({ length: Math.min(50, maxN - i) }, (_, j) =>
    post('/v1/devices', { id: `cap-${String(i + j).padStart(6, '0')}`, type: 'bench' }, access)));
  for (const d of batch) lines.push(`${d.id} ${d.api_key}`);
}
const keysFile = join(dataDir, 'keys.txt');
writeFileSync(keysFile, `${lines.join('\n')}\n`, { mode: 0o600 });

const rows = [];
for (const n of steps) {
  log(`N=${n}: starting the simulator`);
  let last = '';
  const sim = pinned(LOAD_CPU, SIM, ['--url', `ws://127.0.0.1:${port}`, '--keys-file', keysFile, '--devices', String(n),
    '--heartbeat-s', String(a.heartbeatS), '--telemetry-s', '0', '--stats-s', '1', '--log', 'warn'], {}, 'pipe');
  sim.stderr.on('data', (d) => { for (const l of d.toString().split('\n')) if (l.startsWith('stats ')) last = l; });
  const stat = (k) => Number(new RegExp(`${k}=(\\d+)`).exec(last)?.[1] ?? 0);
  const deadline = Date.now() + 90_000;
  while (stat('connected') < n && Date.now() < deadline) await sleep(500);
  const connectS = (90_000 - (deadline - Date.now())) / 1000;
  await sleep(2 * a.heartbeatS * 1000); // settle: every device past its first heartbeats
  const cpu0 = procCpuSeconds(sim.pid); const acked0 = stat('hb_acked'); const t0 = Date.now();
  await sleep(a.seconds * 1000);
  const cpu = procCpuSeconds(sim.pid) - cpu0; const wall = (Date.now() - t0) / 1000;
  const acked = (stat('hb_acked') - acked0) / wall;
  const mem = procMem(sim.pid);
  rows.push({ n, connected: stat('connected'), connectS, acked, expected: n / a.heartbeatS, cpuShare: cpu / wall, rssMiB: (mem?.rss ?? 0) / 1048576, reconnects: stat('reconnects') });
  sim.kill('SIGTERM');
  await new Promise((r) => sim.once('exit', r));
  await sleep(3000);
}

console.log(`\n# fleetwire-sim on one core (heartbeat every ${a.heartbeatS} s, QoS 1; broker + Redis on the other core)`);
console.log('devices  connected  connect s  hb acked/s  expected/s  sim CPU  RSS MiB  reconnects  devices/core at this rate');
for (const r of rows) {
  console.log(`${String(r.n).padStart(7)}  ${String(r.connected).padStart(9)}  ${fmt(r.connectS, 1).padStart(9)}  ${fmt(r.acked, 1).padStart(10)}  ${fmt(r.expected, 1).padStart(10)}  ${(fmt(r.cpuShare * 100, 1) + '%').padStart(7)}  ${fmt(r.rssMiB, 1).padStart(7)}  ${String(r.reconnects).padStart(10)}  ${fmt(r.n / Math.max(r.cpuShare, 1e-9)).padStart(10)}`);
}
server.kill('SIGTERM');
await sleep(500);
process.exit(0);
