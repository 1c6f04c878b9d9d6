/** The auth service's admin commands in the `fleetwire` CLI: users, devices, keys. */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  createLogger, createRedis, isDeviceId, jwtContract, openKeyRing, waitForRedis, FleetwireError, type ServiceCommand, type UserRole,
} from '@fleetwire/common';
import { buildAuthService, type AuthService } from './app.js';
import { loadAuthConfig } from './config.js';
import { DEVICE_TAG_PATTERN, MAX_DEVICE_TAGS } from './devices.js';
import { importLegacyUsers } from './legacy-import.js';

/** Runs `fn` against an auth service built from the environment (no listening), then closes it. */
async function withAuth<T>(env: NodeJS.ProcessEnv, fn: (auth: AuthService) => Promise<T>): Promise<T> {
  const config = loadAuthConfig(env);
  const redis = createRedis(config.redisUrl, { name: 'cli' });
  redis.on('error', () => undefined); // reported by waitForRedis with what to do
  try {
    await waitForRedis(redis, config.redisUrl, 3000);
  } finally {
    redis.disconnect();
  }
  const auth = await buildAuthService(config, { log: createLogger({ level: 'warn', name: 'cli' }) });
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

const users: ServiceCommand = {
  name: 'users',
  usage: `fleetwire users create --email E --role admin|operator|viewer --password-stdin
fleetwire users import FILE.jsonl import legacy accounts ({"email","password_hash","role"} per line)
fleetwire users unlock --email E  unlock an account locked after failed logins`,
  async run(args, env) {
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
      const user = await withAuth(env, (auth) => auth.accounts.createUser({ email: values.email!, password, role }, 'cli'));
      process.stdout.write(`${JSON.stringify(user)}\n`);
      return 0;
    }
    if (sub === 'import') {
      if (!file) throw new Error('usage: fleetwire users import FILE.jsonl');
      const text = readFileSync(file, 'utf8');
      const report = await withAuth(env, (auth) => importLegacyUsers(text, auth.users, auth.audit, 'cli'));
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
      return withAuth(env, async (auth) => {
        const user = await auth.users.byEmail(values.email!);
        if (!user) throw new FleetwireError('NOT_FOUND', `No user ${values.email}.`);
        const { was_locked: wasLocked } = await auth.accounts.unlock(user.id, 'cli');
        process.stdout.write(wasLocked ? `unlocked ${user.email}\n` : `${user.email} was not locked; its failure count is reset\n`);
        return 0;
      });
    }
    throw new Error('usage: fleetwire users create|import|unlock (see fleetwire help)');
  },
};

const registerUsage = 'usage: fleetwire devices register --type T [--id ID] [--name N] [--location L] [--tags a,b]';

const devices: ServiceCommand = {
  name: 'devices',
  usage: `fleetwire devices register --type T [--id ID] [--name N] [--location L] [--tags a,b]
                                  prints the device id and its API key (shown once)
fleetwire devices reindex         puts every device record into the listing indexes again
                                  (the auth service does it once by itself after an upgrade)`,
  async run(args, env) {
    const { values, positionals } = parseArgs({
      args, allowPositionals: true,
      options: { type: { type: 'string' }, id: { type: 'string' }, name: { type: 'string' }, location: { type: 'string' }, tags: { type: 'string' } },
    });
    if (positionals[0] === 'reindex') {
      const indexed = await withAuth(env, (auth) => auth.devices.reindex());
      process.stdout.write(`indexed ${indexed} device records\n`);
      return 0;
    }
    if (positionals[0] !== 'register' || !values.type) throw new Error(registerUsage);
    if (values.id !== undefined && !isDeviceId(values.id)) throw new Error('a device id is 3-64 characters of a-z, 0-9 and -, starting with a letter or digit');
    const tags = values.tags === undefined ? undefined : [...new Set(values.tags.split(',').map((t) => t.trim()).filter(Boolean))];
    const badTag = tags?.find((t) => !new RegExp(DEVICE_TAG_PATTERN).test(t));
    if (badTag !== undefined) throw new Error(`tag "${badTag}": a tag is 1-32 characters of a-z, 0-9, _, . and -, starting with a letter or digit`);
    if (tags && tags.length > MAX_DEVICE_TAGS) throw new Error(`at most ${MAX_DEVICE_TAGS} tags`);
    const { device, apiKey } = await withAuth(env, async (auth) => {
      const res = await auth.devices.register({ type: values.type!, id: values.id, name: values.name, location: values.location, tags }, 'cli');
      await auth.audit.record({ type: 'device.registered', actor: 'cli', subject: `device:${res.device.id}`, detail: { type: res.device.type } });
      return res;
    });
    process.stdout.write(`${JSON.stringify({ ...device, api_key: apiKey })}\n`);
    process.stderr.write('Store the api_key now: it is not shown again (rotate it with POST /v1/devices/{id}/keys).\n');
    return 0;
  },
};

const keys: ServiceCommand = {
  name: 'keys',
  usage: `fleetwire keys rotate [--activate-in S]
                                  add a signing key; it signs after S seconds (default KEY_ACTIVATION_DELAY_S)`,
  async run(args, env) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { 'activate-in': { type: 'string' } } });
    if (positionals[0] !== 'rotate') throw new Error('usage: fleetwire keys rotate [--activate-in seconds]');
    const config = loadAuthConfig(env);
    const delayS = values['activate-in'] === undefined ? config.keyActivationDelayS : Number(values['activate-in']);
    if (!Number.isInteger(delayS) || delayS < 0) throw new Error('--activate-in takes a whole number of seconds');
    const ring = await openKeyRing(join(resolve(config.dataDir), 'keys'), { retireAfterMs: config.keyRetireAfterS * 1000 });
    const kid = await ring.rotate(delayS * 1000);
    ring.close();
    process.stdout.write(`${JSON.stringify({ kid, signs_from: new Date(Date.now() + delayS * 1000).toISOString() })}\n`);
    return 0;
  },
};

export const authCommands: readonly ServiceCommand[] = [users, devices, keys];
