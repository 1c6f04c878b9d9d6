// Flood with the flooders in their own, lowest-priority process.
//   node bench/flood-isolated.mjs [--seconds 10] [--flooders 10] [--victims 5]
// flood.mjs runs flooders and victims in one generator process, so during the
// first second of a flood the victims' latency also measures that process's
// own saturated event loop. Here the victims run in this process (nice -5) and
// the flooders in bench/lib/flooders.mjs (nice 19), both on the load core, so
// the victims' latency is what the broker gives them. Fleetwire only, DEFAULT
// limits; its Redis is started by the script.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { createRedis, loadOrCreateKeySet, saveDevice, signToken } from '@fleetwire/common';

const arg = (name, def) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? Number(process.argv[i + 1]) : def; };
const seconds = arg('seconds', 10), nFlooders = arg('flooders', 10), nVictims = arg('victims', 5);
const BROKER_CPU = process.env.BENCH_BROKER_CPU ?? '0', LOAD_CPU = process.env.BENCH_LOAD_CPU ?? '1';
const root = fileURLToPath(new URL('..', import.meta.url));
const hardStop = setTimeout(() => { console.error('flood-isolated: hard deadline'); process.exit(3); }, (seconds + 60) * 1000);
hardStop.unref();

execFileSync('renice', ['-n', '-5', '-p', String(process.pid)], { stdio: 'ignore' });
execFileSync('taskset', ['-a', '-p', '-c', LOAD_CPU, String(process.pid)], { stdio: 'ignore' });
const dir = mkdtempSync(join(tmpdir(), 'fw-flood-iso-'));
const redisPort = 20000 + Math.floor(Math.random() * 5000), port = redisPort + 1;
const redisProc = spawn('taskset', ['-c', LOAD_CPU, 'redis-server', '--port', String(redisPort), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
const REDIS_URL = `redis://127.0.0.1:${redisPort}`;
await new Promise((r) => setTimeout(r, 300));
const redis = createRedis(REDIS_URL, { name: 'flood-iso' });
const { signer } = await loadOrCreateKeySet(join(dir, 'keys'));
const broker = spawn('taskset', ['-c', BROKER_CPU, process.execPath, join(root, 'cli/dist/main.js'), 'broker'],
  { env: { ...process.env, REDIS_URL, PORT: String(port), FLEETWIRE_DATA_DIR: dir, LOG_LEVEL: 'warn' }, stdio: 'ignore' });
process.on('exit', () => { broker.kill('SIGKILL'); redisProc.kill('SIGKILL'); });
const url = `ws://127.0.0.1:${port}/mqtt`;
for (let i = 0; ; i++) {
  const up = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
  if (up) break;
  if (i > 100) throw new Error('broker did not become ready');
  await new Promise((r) => setTimeout(r, 100));
}
const token = async (id, typ = 'device') => {
  if (typ === 'device') await saveDevice(redis, id);
  return signToken(signer, { sub: id, typ, ttlSeconds: 3600 });
};
const connect = async (clientId, t) => {
  for (let i = 0; ; i++) {
    try {
      return await mqtt.connectAsync(url, { clientId, reconnectPeriod: 0, createWebsocket: (u) => new WebSocket(u, ['mqtt', `auth.${t}`]) });
    } catch (err) { if (i > 30) throw err; await new Promise((r) => setTimeout(r, 200)); }
  }
};

const observer = await connect('service:obs:1', await token('obs', 'service'));
await observer.subscribeAsync('devices/+/telemetry');
const victims = [];
for (let i = 0; i < nVictims; i++) victims.push(await connect(`victim-${i}`, await token(`victim-${i}`)));
const lat = { before: [], flood: [], after: [] };
let phase = 'before';
observer.on('message', (topic, payload) => { if (topic.includes('/victim-')) lat[phase].push(Date.now() - JSON.parse(payload).at); });
const tick = setInterval(() => victims.forEach((v, i) => v.publish(`devices/victim-${i}/telemetry`, JSON.stringify({ at: Date.now(), readings: [{ name: 'n', value: i, unit: '' }] }))), 50);
await new Promise((r) => setTimeout(r, 2000));

const floodTokens = [];
for (let i = 0; i < nFlooders; i++) floodTokens.push([`flood-${i}`, await token(`flood-${i}`)]);
const cpuOf = (pid) => { const f = execFileSync('cat', [`/proc/${pid}/stat`]).toString().split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) / 100; };
const cpu0 = cpuOf(broker.pid);
phase = 'flood';
const fl = spawn('nice', ['-n', '19', 'taskset', '-c', LOAD_CPU, process.execPath, join(root, 'bench/lib/flooders.mjs'), url, JSON.stringify(floodTokens), String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
fl.stdout.on('data', (d) => (out += d));
await new Promise((r) => fl.on('exit', r));
const brokerCpu = cpuOf(broker.pid) - cpu0;
phase = 'after';
await new Promise((r) => setTimeout(r, 2000));
clearInterval(tick);
const probeToken = await token('probe-0');
const probe = await mqtt.connectAsync(url, { clientId: 'probe-0', reconnectPeriod: 0, connectTimeout: 5000, createWebsocket: (u) => new WebSocket(u, ['mqtt', `auth.${probeToken}`]) })
  .then((c) => c.endAsync().then(() => true), () => false);

const q = (a, p) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };
console.log(`flood-isolated: ${nFlooders} flooders for ${seconds}s (${JSON.parse(out).sent} publishes offered, ${Math.round(JSON.parse(out).sent / seconds)}/s), ${nVictims} victims at 20 msg/s`);
console.log(`broker alive: ${broker.exitCode === null}, new client after the flood: ${probe ? 'ok' : 'FAILED'}, broker CPU during flood: ${(100 * brokerCpu / seconds).toFixed(0)}%`);
for (const k of ['before', 'flood', 'after']) {
  console.log(`victims ${k.padEnd(6)} n ${String(lat[k].length).padStart(5)}  p50 ${q(lat[k], 0.5)} ms  p99 ${q(lat[k], 0.99)} ms  max ${Math.max(...lat[k])} ms`);
}
broker.kill('SIGKILL'); redisProc.kill('SIGKILL'); redis.disconnect();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
