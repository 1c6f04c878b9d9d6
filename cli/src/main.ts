#!/usr/bin/env node
/**
 * The fleetwire command. `up` runs every service in one process on one port
 * (today: the broker); `<service>` runs one; the rest are admin commands.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  createRedis, waitForRedis, jwtContract, loadConfig, baseSpec, loadOrCreateKeySet, saveDevice, signToken, isDeviceId, FleetwireError,
  type TokenType, type UserRole,
} from '@fleetwire/common';
import { loadBrokerConfig, runBroker, MQTT_PATH } from '@fleetwire/broker';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `fleetwire ${VERSION}

Usage:
  fleetwire up                      run every service in one process on one port (PORT, default 8080)
  fleetwire broker                  run the MQTT-over-WebSocket broker alone
  fleetwire token device <id>       mint a device token with the local key (development only);
                                    registers the device as active if it is not known yet
  fleetwire token user <id> --role admin|operator|viewer
  fleetwire token service <name>
      --ttl <seconds>               token lifetime (default 3600)
  fleetwire spec                    version, commit, features and limits as JSON (never secrets)

Configuration comes from the environment; see README.md.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'up':
    case 'broker': {
      const { info, config } = await runBroker(process.env, VERSION);
      const scheme = config.tlsCertFile ? 'wss' : 'ws';
      process.stderr.write(
        `fleetwire ${VERSION} listening on port ${info.port}\n` +
        `  MQTT over WebSocket: ${scheme}://localhost:${info.port}${MQTT_PATH}  (subprotocols: mqtt, auth.<jwt>)\n` +
        `  HTTP API:            ${config.tlsCertFile ? 'https' : 'http'}://localhost:${info.port}/v1  (OpenAPI at /docs)\n` +
        `  Health / metrics:    /healthz  /readyz  /metrics\n` +
        (info.tcpPort ? `  Service MQTT/TCP:    ${config.tcpHost}:${info.tcpPort}  (username "service", JWT as password)\n` : '') +
        `  Connect a device:    npx fleetwire token device my-device-1   then see README.md\n`,
      );
      return -1; // keep running
    }
    case 'token':
      return token(rest);
    case 'spec':
      process.stdout.write(`${JSON.stringify(spec(), null, 2)}\n`);
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
      if (!(await redis.exists(`fleetwire:device:${sub}`))) await saveDevice(redis, sub, { type: 'dev', name: sub });
    } finally {
      redis.disconnect();
    }
  }
  const { signer } = await loadOrCreateKeySet(join(resolve(base.dataDir), 'keys'));
  process.stdout.write(`${await signToken(signer, { sub, typ, ttlSeconds, ...(role ? { role } : {}) })}\n`);
  return 0;
}

function spec(): Record<string, unknown> {
  const config = loadBrokerConfig();
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch { /* not a git checkout */ }
  return {
    version: VERSION,
    commit,
    features: {
      broker: true,
      tls: Boolean(config.tlsCertFile),
      cluster: config.cluster,
      service_tcp_listener: config.tcpPort > 0,
      token_source: config.jwksUrl ? 'jwks' : 'local-keys',
    },
    limits: Object.fromEntries(Object.entries(config).filter(([k]) => !/url|file|dir|host|nodeId/i.test(k))),
  };
}

main(process.argv.slice(2)).then(
  (code) => { if (code >= 0) process.exit(code); },
  (err: unknown) => {
    process.stderr.write(`fleetwire: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
