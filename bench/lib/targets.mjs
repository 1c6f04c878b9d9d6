// Starts and stops the three brokers under test, pinned to core 0, and
// hands out connection options (including Fleetwire JWTs) per identity.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, createWriteStream, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitForPort, sleep, procAlive, log } from './util.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
export const BENCH_DIR = join(HERE, '..');
export const REPO = join(BENCH_DIR, '..');
export const FLEETWIRE_MAIN = join(REPO, 'cli', 'dist', 'main.js');
export const ALL_TARGETS = ['fleetwire', 'bare-aedes', 'mosquitto'];
export const BROKER_CPU = process.env.BENCH_BROKER_CPU ?? '0';
export const LOAD_CPU = process.env.BENCH_LOAD_CPU ?? '1';

/** Limits raised so the production-safe defaults do not throttle throughput runs. */
export const BENCH_LIMITS = {
  BROKER_PUBLISH_PER_S: '1000000000',
  BROKER_PUBLISH_BURST: '1000000000',
  BROKER_PUBLISH_PER_MIN: '1000000000',
  BROKER_PUBLISH_BYTES_PER_S: '1000000000000',
  BROKER_PUBLISH_BYTES_PER_MIN: '1000000000000',
  BROKER_ABUSE_DROPS_BEFORE_KICK: '1000000000',
  BROKER_MAX_CONNECTIONS_PER_IP: '1000000',
  HTTP_MAX_SOCKETS_PER_IP: '1000100', // every load connection comes from 127.0.0.1
  BROKER_CONNECT_ATTEMPTS_PER_IP: '1000000000',
  BROKER_AUTH_FAILURES_BEFORE_BAN: '1000000',
};

export function parseTargets(spec) {
  const names = spec === 'all' ? ALL_TARGETS : String(spec).split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) if (!ALL_TARGETS.includes(n)) throw new Error(`unknown target ${n} (known: ${ALL_TARGETS.join(', ')})`);
  return names;
}

export function fleetwireAvailable() { return existsSync(FLEETWIRE_MAIN); }

let common = null;
async function fleetwireCommon() {
  if (!common) common = await import('@fleetwire/common');
  return common;
}

function spawnPinned(cpu, cmd, args, opts, logFile) {
  const child = spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  const tail = [];
  const out = logFile ? createWriteStream(logFile) : null;
  const keep = (d) => {
    if (out) out.write(d);
    for (const line of d.toString().split('\n')) if (line.trim()) { tail.push(line); if (tail.length > 60) tail.shift(); }
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const state = { exited: false, code: null, signal: null };
  const counts = { lines: 0 };
  const countLines = (d) => { for (let i = d.indexOf(10); i !== -1; i = d.indexOf(10, i + 1)) counts.lines++; };
  child.stdout.on('data', countLines);
  child.stderr.on('data', countLines);
  const exitP = new Promise((resolve) => child.on('exit', (code, signal) => { Object.assign(state, { exited: true, code, signal }); if (out) out.end(); resolve(state); }));
  return { child, tail, state, exitP, counts };
}

async function stopProc(p, timeoutMs = 8000) {
  if (!p || p.state.exited) return;
  p.child.kill('SIGTERM');
  const t = setTimeout(() => { if (!p.state.exited) p.child.kill('SIGKILL'); }, timeoutMs);
  await p.exitP;
  clearTimeout(t);
}

/**
 * opts: { env (extra env for fleetwire), limits: 'bench' | 'default',
 *         brokerCpu, redisCpu (taskset CPU lists; default BROKER_CPU and LOAD_CPU, '0-1' = any core),
 *         inspect (start node brokers with --inspect on a free port),
 *         nodeArgs: string[], logDir, readyTimeoutMs }
 */
export async function startTarget(name, opts = {}) {
  const brokerCpu = opts.brokerCpu ?? BROKER_CPU;
  const redisCpu = opts.redisCpu ?? LOAD_CPU;
  const logDir = opts.logDir ?? mkdtempSync(join(tmpdir(), 'fwbench-logs-'));
  const wsPort = await freePort();
  const tcpPort = await freePort();
  const inspectPort = opts.inspect ? await freePort() : null;
  const nodeArgs = [...(opts.nodeArgs ?? [])];
  if (inspectPort) nodeArgs.push(`--inspect=127.0.0.1:${inspectPort}`);
  const t = {
    name, wsPort, tcpPort, inspectPort, logDir, host: '127.0.0.1', path: '/mqtt',
    procs: {}, notes: [],
    get pid() { return this.procs.broker.child.pid; },
    get alive() { return !this.procs.broker.state.exited && procAlive(this.pid); },
    exitInfo() { const s = this.procs.broker.state; return s.exited ? `exited code=${s.code} signal=${s.signal}` : 'running'; },
    stderrTail(n = 20) { return this.procs.broker.tail.slice(-n).join('\n'); },
    /** Lines the broker has written to stdout+stderr so far. */
    get outputLines() { return this.procs.broker.counts.lines; },
    supportsTcp: () => true,
    async registerDevices() {},
    async clientOpts(identity, transport) {
      return { transport, host: '127.0.0.1', port: transport === 'ws' ? wsPort : tcpPort, path: '/mqtt', protocols: ['mqtt'], clientId: clientIdOf(identity) };
    },
    async stop() { await stopProc(this.procs.broker); },
  };

  if (name === 'bare-aedes') {
    t.procs.broker = spawnPinned(brokerCpu, process.execPath, [...nodeArgs, join(BENCH_DIR, 'targets', 'bare-aedes.mjs'), '--port', String(wsPort), '--tcp-port', String(tcpPort)], {}, join(logDir, 'bare-aedes.log'));
  } else if (name === 'mosquitto') {
    const dir = mkdtempSync(join(tmpdir(), 'fwbench-mosq-'));
    const conf = join(dir, 'mosquitto.conf');
    writeFileSync(conf, [
      'user root',
      'allow_anonymous true',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'max_keepalive 65535',
      'per_listener_settings false',
      `listener ${wsPort} 127.0.0.1`,
      'protocol websockets',
      `listener ${tcpPort} 127.0.0.1`,
      'protocol mqtt',
      '',
    ].join('\n'));
    t.procs.broker = spawnPinned(brokerCpu, '/usr/sbin/mosquitto', ['-c', conf], {}, join(logDir, 'mosquitto.log'));
    const stop0 = t.stop.bind(t);
    t.stop = async () => { await stop0(); rmSync(dir, { recursive: true, force: true }); };
  } else if (name === 'fleetwire') {
    if (!fleetwireAvailable()) throw new Error(`${FLEETWIRE_MAIN} does not exist (not built yet)`);
    const fw = await fleetwireCommon();
    const dataDir = mkdtempSync(join(tmpdir(), 'fwbench-data-'));
    const redisPort = await freePort();
    t.procs.redis = spawnPinned(redisCpu, 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dataDir], {}, join(logDir, 'redis.log'));
    await waitForPort(redisPort, 10000, () => t.procs.redis.state.exited);
    const redisUrl = `redis://127.0.0.1:${redisPort}`;
    const redis = fw.createRedis(redisUrl, { name: 'bench' });
    await fw.waitForRedis(redis, redisUrl);
    const { signer } = await fw.loadOrCreateKeySet(join(dataDir, 'keys'));
    const limits = opts.limits === 'default' ? {} : BENCH_LIMITS;
    const env = {
      ...process.env,
      PORT: String(wsPort), HOST: '127.0.0.1', REDIS_URL: redisUrl, FLEETWIRE_DATA_DIR: dataDir,
      BROKER_TCP_PORT: String(tcpPort), LOG_LEVEL: 'warn', NODE_ENV: 'production',
      ...limits, ...(opts.env ?? {}),
    };
    t.env = env;
    t.redisUrl = redisUrl;
    t.redisPid = t.procs.redis.child.pid;
    t.procs.broker = spawnPinned(brokerCpu, process.execPath, [...nodeArgs, FLEETWIRE_MAIN, 'broker'], { env, cwd: dataDir }, join(logDir, 'fleetwire.log'));
    const tokens = new Map();
    let serviceToken = null;
    const registered = new Set();
    t.supportsTcp = (kind) => kind === 'service';
    t.registerDevices = async (ids) => {
      const todo = ids.filter((id) => !registered.has(id));
      for (let i = 0; i < todo.length; i += 1000) {
        await Promise.all(todo.slice(i, i + 1000).map((id) => fw.saveDevice(redis, id)));
      }
      for (const id of todo) registered.add(id);
      for (const id of todo) if (!tokens.has(id)) tokens.set(id, await fw.signToken(signer, { sub: id, typ: 'device', ttlSeconds: 3600 }));
    };
    t.clientOpts = async (identity, transport) => {
      const base = { transport, host: '127.0.0.1', port: transport === 'ws' ? wsPort : tcpPort, path: '/mqtt', clientId: clientIdOf(identity) };
      let token;
      if (identity.kind === 'device') {
        if (!registered.has(identity.id)) await t.registerDevices([identity.id]);
        token = tokens.get(identity.id);
      } else {
        serviceToken ??= await fw.signToken(signer, { sub: 'bench-svc', typ: 'service', ttlSeconds: 3600 });
        token = serviceToken;
      }
      if (transport === 'tcp') {
        if (identity.kind !== 'service') throw new Error('fleetwire accepts only services on MQTT/TCP');
        return { ...base, username: 'service', password: token };
      }
      return { ...base, protocols: ['mqtt', 'auth.' + token] };
    };
    t.stop = async () => {
      await stopProc(t.procs.broker);
      redis.disconnect();
      await stopProc(t.procs.redis);
      rmSync(dataDir, { recursive: true, force: true });
    };
  } else {
    throw new Error(`unknown target ${name}`);
  }

  const b = t.procs.broker;
  try {
    await waitForPort(wsPort, opts.readyTimeoutMs ?? 20000, () => b.state.exited);
    await waitForPort(tcpPort, 5000, () => b.state.exited);
  } catch (err) {
    const tail = b.tail.slice(-30).join('\n');
    await t.stop().catch(() => {});
    throw new Error(`${name} did not start: ${err.message}\n--- ${name} output (last lines) ---\n${tail}`);
  }
  await sleep(300);
  log(`${name} up: pid ${t.pid}, ws ${wsPort}, tcp ${tcpPort}${inspectPort ? `, inspector ${inspectPort}` : ''}, logs ${logDir}`);
  return t;
}

/** clientIds follow the Fleetwire ACL on every target so topologies stay identical. */
export function clientIdOf(identity) {
  if (identity.kind === 'device') return identity.id;
  return `service:bench-svc:${identity.n}`;
}

/** For fleetwire only services may use TCP; the same rule is applied to every target. */
export function transportFor(kind, requested) {
  if (requested === 'tcp' && kind === 'device') return 'ws';
  return requested;
}

/**
 * `fleetwire <service>` as its own process next to a started fleetwire target `t` (same Redis,
 * same data dir and so the same keys), publishing through its broker. `env` adds settings;
 * `inspect` opens the inspector on that port; `cpu` pins it ('any' = not pinned).
 * Resolves once it listens: { child, pid, url (http://127.0.0.1:<port>), stop() }.
 */
export async function startService(t, service, { env = {}, inspect = null, cpu = 'any' } = {}) {
  const port = await freePort();
  const fullEnv = { ...t.env, PORT: String(port), BROKER_TCP_PORT: undefined, ...env };
  const node = [process.execPath, ...(inspect ? [`--inspect=127.0.0.1:${inspect}`] : []), FLEETWIRE_MAIN, service];
  const cmd = cpu === 'any' ? node : ['taskset', '-c', String(cpu), ...node];
  const child = spawn(cmd[0], cmd.slice(1), { env: fullEnv, cwd: fullEnv.FLEETWIRE_DATA_DIR, stdio: ['ignore', 'ignore', 'pipe'] });
  const tail = [];
  child.stderr.on('data', (d) => { tail.push(...d.toString().split('\n').filter(Boolean)); tail.splice(0, Math.max(0, tail.length - 30)); });
  const stop = async () => {
    if (child.exitCode !== null) return;
    child.kill('SIGTERM');
    await Promise.race([new Promise((r) => child.once('exit', r)), sleep(10000)]);
  };
  try {
    await waitForPort(port, 20000, () => child.exitCode !== null);
  } catch (err) {
    await stop();
    throw new Error(`${service} did not start: ${err.message}\n${tail.join('\n')}`);
  }
  return { child, pid: child.pid, url: `http://127.0.0.1:${port}`, tail, stop };
}

/** `fleetwire device-service` next to `t`, publishing through its broker (startService). */
export function startDeviceService(t, opts = {}) {
  return startService(t, 'device-service', { ...opts, env: { DEVICE_BROKER_URL: `ws://127.0.0.1:${t.wsPort}/mqtt`, ...opts.env } });
}
