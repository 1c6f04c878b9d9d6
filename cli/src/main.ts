#!/usr/bin/env node
/**
 * The fleetwire command. `up` runs every service in one process on one port,
 * `fleetwire <service>` runs one, and services add their admin commands
 * (cli/src/services.ts finds them); `token` and `spec` are the CLI's own.
 */
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  composeSpec, createRedis, fleetwireVersion, jwtContract, loadConfig, baseSpec, loadOrCreateKeySet, redisKeys, repoRoot, runServices,
  saveDevice, signToken, isDeviceId, waitForRedis, FleetwireError, type AnyService, type TokenType, type UserRole,
} from '@fleetwire/common';
import { discoverServices, usage } from './services.js';

const VERSION = fleetwireVersion;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const services = await discoverServices(repoRoot);
  const USAGE = usage(VERSION, services);
  switch (command) {
    case 'up':
      await runServices(services, process.env, { version: VERSION });
      return -1; // keep running
    case 'token':
      return token(rest);
    case 'spec':
      process.stdout.write(`${JSON.stringify(await spec(services), null, 2)}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return 0;
  }
  const service = services.find((s) => s.name === command);
  if (service) {
    await runServices([service], process.env, { version: VERSION });
    return -1;
  }
  // A command's name is one or more words (`users`, `devices command`); the longest that argv starts with wins,
  // so `devices command` is the device service's while `devices register` stays the auth service's `devices`.
  const words = (name: string): string[] => name.split(' ');
  const adminCommand = services.flatMap((s) => s.commands ?? [])
    .filter((c) => words(c.name).every((w, i) => argv[i] === w))
    .sort((a, b) => words(b.name).length - words(a.name).length)[0];
  if (adminCommand) return adminCommand.run(argv.slice(words(adminCommand.name).length), process.env);
  process.stderr.write(`unknown command "${command}"\n\n${USAGE}\n`);
  return 2;
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

/** Every service's section; works without Redis (the parts that need it say unavailable). */
async function spec(services: readonly AnyService[]): Promise<Record<string, unknown>> {
  const configs = services.map((s) => s.loadConfig(process.env));
  const base = loadConfig(baseSpec);
  const redis = createRedis(base.redisUrl, { name: 'cli', maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined);
  const reachable = await waitForRedis(redis, base.redisUrl, 1500).then(() => true, () => false);
  try {
    return await composeSpec(services, configs, reachable ? redis : null, VERSION);
  } finally {
    redis.disconnect();
  }
}

main(process.argv.slice(2)).then(
  (code) => { if (code >= 0) process.exit(code); },
  (err: unknown) => {
    process.stderr.write(`fleetwire: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
