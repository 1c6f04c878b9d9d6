#!/usr/bin/env node
/**
 * The fleetwire command. `up` runs every service in one process on one port;
 * `broker` and `auth-service` run one; the rest are admin commands.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  createLogger, createMetricsRegistry, createRedis, exitOnSignal, gitCommit, jwtContract, loadConfig, baseSpec, loadOrCreateKeySet,
  openKeyRing, readTls, redisKeys, saveDevice, signToken, isDeviceId, waitForRedis, FleetwireError, type TokenType, type UserRole,
} from '@fleetwire/common';
import { brokerSpecReport, buildBroker, createVerifierFromConfig, loadBrokerConfig, runBroker, MQTT_PATH } from '@fleetwire/broker';
import { accountCounts, authSpecReport, buildAuthService, importLegacyUsers, loadAuthConfig, runAuthService, type AccountCounts, type AuthService } from '@fleetwire/auth-service';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `fleetwire ${VERSION}

Usage:
  fleetwire up                      run every service in one process on one port (PORT, default 8080)
  fleetwire broker                  run the MQTT-over-WebSocket broker alone
  fleetwire auth-service            run the auth service alone (users, devices, keys, audit)

  fleetwire users create --email E --role admin|operator|viewer --password-stdin
  fleetwire users import FILE.jsonl import legacy accounts ({"email","password_hash","role"} per line)
  fleetwire users unlock --email E  unlock an account locked after failed logins
  fleetwire devices register --type T [--id ID] [--name N] [--location L]
                                    prints the device id and its API key (shown once)
  fleetwire keys rotate [--activate-in S]
                                    add a signing key; it signs after S seconds (default KEY_ACTIVATION_DELAY_S)

  fleetwire token device <id>       mint a device token with the local key (development only);
                                    registers the device as active if it is not known yet
  fleetwire token user <id> --role admin|operator|viewer
  fleetwire token service <name>
      --ttl <seconds>               token lifetime (default 3600)
  fleetwire spec                    version, commit, features, parameters and limits as JSON (never secrets)

Configuration comes from the environment; see README.md.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'up':
      return up();
    case 'broker': {
      const { info, config } = await runBroker(process.env, VERSION);
      printUrls(info.port, Boolean(config.tlsCertFile), info.tcpPort ? `${config.tcpHost}:${info.tcpPort}` : null);
      return -1; // keep running
    }
    case 'auth-service': {
      const { port, config } = await runAuthService(process.env, VERSION);
      process.stderr.write(`fleetwire auth service ${VERSION} listening on port ${port} (${config.tlsCertFile ? 'https' : 'http'}; OpenAPI at /docs)\n`);
      return -1;
    }
    case 'users':
      return users(rest);
    case 'devices':
      return devices(rest);
    case 'keys':
      return keys(rest);
    case 'token':
      return token(rest);
    case 'spec':
      process.stdout.write(`${JSON.stringify(await spec(), null, 2)}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return 0;
    default:
      process.stderr.write(`unknown command "${command}"\n\n${USAGE}\n`);
      return 2;
  }
}

/** Broker and auth service in one process, on the broker's port, sharing one key ring. */
async function up(): Promise<number> {
  const brokerConfig = loadBrokerConfig();
  const authConfig = loadAuthConfig();
  const log = createLogger({ level: brokerConfig.logLevel, name: 'fleetwire' });
  const metricsRegistry = createMetricsRegistry();
  const keyRing = await openKeyRing(join(resolve(brokerConfig.dataDir), 'keys'), { retireAfterMs: brokerConfig.keyRetireAfterS * 1000, log });
  const verifier = brokerConfig.jwksUrl ? await createVerifierFromConfig(brokerConfig, log) : keyRing.verifier;
  const broker = await buildBroker(brokerConfig, { verifier, log, metricsRegistry, tls: await readTls(brokerConfig), version: VERSION });
  const auth = await buildAuthService(authConfig, {
    http: broker.http, keys: keyRing, log, metricsRegistry, version: VERSION,
    specSections: () => ({ broker: brokerSpecReport(brokerConfig) }),
  });
  const info = await broker.listen();
  exitOnSignal(log, brokerConfig.shutdownTimeoutMs, async () => {
    await broker.drain();
    await auth.close();
    keyRing.close();
  });
  printUrls(info.port, Boolean(brokerConfig.tlsCertFile), info.tcpPort ? `${brokerConfig.tcpHost}:${info.tcpPort}` : null);
  return -1;
}

function printUrls(port: number, tls: boolean, tcp: string | null): void {
  process.stderr.write(
    `fleetwire ${VERSION} listening on port ${port}\n` +
    `  MQTT over WebSocket: ${tls ? 'wss' : 'ws'}://localhost:${port}${MQTT_PATH}  (subprotocols: mqtt, auth.<jwt>)\n` +
    `  HTTP API:            ${tls ? 'https' : 'http'}://localhost:${port}/v1  (OpenAPI at /docs)\n` +
    `  Health / metrics:    /healthz  /readyz  /metrics\n` +
    (tcp ? `  Service MQTT/TCP:    ${tcp}  (username "service", JWT as password)\n` : '') +
    `  Connect a device:    see README.md (five-minute tour)\n`,
  );
}

/** Runs `fn` against an auth service built from the environment (no listening), then closes it. */
async function withAuth<T>(fn: (auth: AuthService) => Promise<T>): Promise<T> {
  const config = loadAuthConfig();
  const redis = createRedis(config.redisUrl, { name: 'cli' });
  redis.on('error', () => undefined); // reported by waitForRedis with what to do
  try {
    await waitForRedis(redis, config.redisUrl, 3000);
  } finally {
    redis.disconnect();
  }
  const auth = await buildAuthService(config, { log: createLogger({ level: 'warn', name: 'cli' }), version: VERSION });
  try {
    return await fn(auth);
  } finally {
    await auth.close();
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function users(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { email: { type: 'string' }, role: { type: 'string' }, 'password-stdin': { type: 'boolean', default: false } },
  });
  const [sub, file] = positionals;
  if (sub === 'create') {
    const role = values.role as UserRole | undefined;
    if (!values.email || !role || !jwtContract.user_roles.includes(role) || !values['password-stdin']) {
      throw new Error(`usage: fleetwire users create --email E --role ${jwtContract.user_roles.join('|')} --password-stdin`);
    }
    // Only the first line: `echo pw | ...` and a pasted password both work; the password never appears in argv.
    const password = (await readStdin()).split(/\r?\n/)[0] ?? '';
    const user = await withAuth((auth) => auth.accounts.createUser({ email: values.email!, password, role }, 'cli'));
    process.stdout.write(`${JSON.stringify(user)}\n`);
    return 0;
  }
  if (sub === 'import') {
    if (!file) throw new Error('usage: fleetwire users import FILE.jsonl');
    const text = readFileSync(file, 'utf8');
    const report = await withAuth((auth) => importLegacyUsers(text, auth.users, auth.audit, 'cli'));
    for (const e of report.errors) process.stderr.write(`${file}:${e.line}: ${e.message}\n`);
    if (report.errors.length) {
      process.stderr.write(`nothing imported: fix the ${report.errors.length} line(s) above and run again\n`);
      return 1;
    }
    process.stdout.write(`imported ${report.imported}, already present (left unchanged) ${report.skipped_existing}\n`);
    return 0;
  }
  if (sub === 'unlock') {
    if (!values.email) throw new Error('usage: fleetwire users unlock --email E');
    return withAuth(async (auth) => {
      const user = await auth.users.byEmail(values.email!);
      if (!user) throw new FleetwireError('NOT_FOUND', `No user ${values.email}.`);
      const { was_locked: wasLocked } = await auth.accounts.unlock(user.id, 'cli');
      process.stdout.write(wasLocked ? `unlocked ${user.email}\n` : `${user.email} was not locked; its failure count is reset\n`);
      return 0;
    });
  }
  throw new Error('usage: fleetwire users create|import|unlock (see fleetwire help)');
}

async function devices(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { type: { type: 'string' }, id: { type: 'string' }, name: { type: 'string' }, location: { type: 'string' } },
  });
  if (positionals[0] !== 'register' || !values.type) throw new Error('usage: fleetwire devices register --type T [--id ID] [--name N] [--location L]');
  if (values.id !== undefined && !isDeviceId(values.id)) throw new Error('a device id is 3-64 characters of a-z, 0-9 and -, starting with a letter or digit');
  const { device, apiKey } = await withAuth(async (auth) => {
    const res = await auth.devices.register({ type: values.type!, id: values.id, name: values.name, location: values.location }, 'cli');
    await auth.audit.record({ type: 'device.registered', actor: 'cli', subject: `device:${res.device.id}`, detail: { type: res.device.type } });
    return res;
  });
  process.stdout.write(`${JSON.stringify({ ...device, api_key: apiKey })}\n`);
  process.stderr.write('Store the api_key now: it is not shown again (rotate it with POST /v1/devices/{id}/keys).\n');
  return 0;
}

async function keys(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { 'activate-in': { type: 'string' } } });
  if (positionals[0] !== 'rotate') throw new Error('usage: fleetwire keys rotate [--activate-in seconds]');
  const config = loadAuthConfig();
  const delayS = values['activate-in'] === undefined ? config.keyActivationDelayS : Number(values['activate-in']);
  if (!Number.isInteger(delayS) || delayS < 0) throw new Error('--activate-in takes a whole number of seconds');
  const ring = await openKeyRing(join(resolve(config.dataDir), 'keys'), { retireAfterMs: config.keyRetireAfterS * 1000 });
  const kid = await ring.rotate(delayS * 1000);
  ring.close();
  process.stdout.write(`${JSON.stringify({ kid, signs_from: new Date(Date.now() + delayS * 1000).toISOString() })}\n`);
  return 0;
}

async function token(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { role: { type: 'string' }, ttl: { type: 'string', default: '3600' } },
  });
  const [typ, sub] = positionals as [TokenType | undefined, string | undefined];
  const base = loadConfig(baseSpec);
  if (base.nodeEnv === 'production') throw new FleetwireError('AUTH_DEV_ONLY');
  if (!typ || !jwtContract.types.includes(typ) || !sub) {
    throw new Error('usage: fleetwire token device|user|service <id> [--role R] [--ttl seconds]');
  }
  const ttlSeconds = Number(values.ttl);
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new Error('--ttl takes a whole number of seconds');
  const role = values.role as UserRole | undefined;
  if (typ === 'user' && (!role || !jwtContract.user_roles.includes(role))) {
    throw new Error(`a user token needs --role ${jwtContract.user_roles.join('|')}`);
  }
  if (typ === 'device') {
    if (!isDeviceId(sub)) throw new Error('a device id is 3-64 characters of a-z, 0-9 and -, starting with a letter or digit');
    const redis = createRedis(base.redisUrl, { name: 'cli' });
    redis.on('error', () => undefined); // reported by waitForRedis with what to do
    try {
      await waitForRedis(redis, base.redisUrl, 3000);
      if (!(await redis.exists(redisKeys.device(sub)))) await saveDevice(redis, sub, { type: 'dev', name: sub });
    } finally {
      redis.disconnect();
    }
  }
  const { signer } = await loadOrCreateKeySet(join(resolve(base.dataDir), 'keys'), { retireAfterMs: base.keyRetireAfterS * 1000 });
  process.stdout.write(`${await signToken(signer, { sub, typ, ttlSeconds, ...(role ? { role } : {}) })}\n`);
  return 0;
}

/** Works without Redis: the account counts are then reported as unavailable. */
async function spec(): Promise<Record<string, unknown>> {
  const authConfig = loadAuthConfig();
  const redis = createRedis(authConfig.redisUrl, { name: 'cli', maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined);
  let counts: AccountCounts | null = null;
  try {
    await waitForRedis(redis, authConfig.redisUrl, 1500);
    counts = await accountCounts(redis);
  } catch { /* reported as unavailable */ } finally {
    redis.disconnect();
  }
  return { version: VERSION, commit: gitCommit(), broker: brokerSpecReport(loadBrokerConfig()), auth: authSpecReport(authConfig, counts) };
}

main(process.argv.slice(2)).then(
  (code) => { if (code >= 0) process.exit(code); },
  (err: unknown) => {
    process.stderr.write(`fleetwire: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
