/** Broker entry: env → validated config → listen → SIGTERM drain. */
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  createLogger, createTokenVerifier, exitOnSignal, openKeyRing, readTls, type Logger, type TokenVerifier,
} from '@fleetwire/common';
import { buildBroker, type Broker, type ListenInfo } from './app.js';
import { loadBrokerConfig, type BrokerConfig } from './config.js';

/** Local keys under <dataDir>/keys (re-read every 30 s to pick up rotations), or a JWKS URL. */
export async function createVerifierFromConfig(config: BrokerConfig, log: Logger): Promise<TokenVerifier> {
  if (config.jwksUrl) return createTokenVerifier({ jwksUrl: config.jwksUrl, jwksCacheMs: config.jwksCacheMs });
  const ring = await openKeyRing(join(resolve(config.dataDir), 'keys'), { retireAfterMs: config.keyRetireAfterS * 1000, log });
  return ring.verifier;
}

export interface RunningBroker { broker: Broker; info: ListenInfo; config: BrokerConfig }

export async function runBroker(env: NodeJS.ProcessEnv = process.env, version = '0.1.0'): Promise<RunningBroker> {
  const config = loadBrokerConfig(env);
  const log = createLogger({ level: config.logLevel, name: 'broker' });
  const verifier = await createVerifierFromConfig(config, log);
  const broker = await buildBroker(config, { verifier, log, tls: await readTls(config), version });
  const info = await broker.listen();

  exitOnSignal(log, config.shutdownTimeoutMs, async () => {
    const { leftOpen } = await broker.drain();
    log.info({ left_open: leftOpen }, 'broker drained');
  });
  return { broker, info, config };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runBroker().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
