/** Broker entry: env → validated config → listen → SIGTERM drain. */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  createLogger, createTokenVerifier, loadOrCreateKeySet, FleetwireError, type Logger, type TokenVerifier,
} from '@fleetwire/common';
import { buildBroker, type Broker, type ListenInfo } from './app.js';
import { loadBrokerConfig, type BrokerConfig } from './config.js';

/** Local keys under <dataDir>/keys (re-read every 30 s to pick up rotations), or a JWKS URL. */
export async function createVerifierFromConfig(config: BrokerConfig, log: Logger): Promise<TokenVerifier> {
  if (config.jwksUrl) return createTokenVerifier({ jwksUrl: config.jwksUrl, jwksCacheMs: config.jwksCacheMs });
  const keysDir = join(resolve(config.dataDir), 'keys');
  const { publicJwks } = await loadOrCreateKeySet(keysDir);
  const verifier = createTokenVerifier({ keys: publicJwks });
  let kids = publicJwks.map((k) => k.kid).join(',');
  setInterval(() => {
    loadOrCreateKeySet(keysDir).then(
      (set) => {
        // setKeys also empties the verified-token cache, so only when the set really changed.
        const now = set.publicJwks.map((k) => k.kid).join(',');
        if (now === kids) return;
        kids = now;
        verifier.setKeys(set.publicJwks);
        log.info({ kids: now }, 'signing keys changed on disk; trusting the new set');
      },
      (err: unknown) => log.error({ err }, 'reloading signing keys failed; keeping the previous set'),
    );
  }, 30_000).unref();
  return verifier;
}

async function loadTls(config: BrokerConfig): Promise<{ key: Buffer; cert: Buffer } | null> {
  if (!config.tlsCertFile && !config.tlsKeyFile) return null;
  if (!config.tlsCertFile || !config.tlsKeyFile) {
    throw new FleetwireError('CONFIG_INVALID', 'Both TLS_CERT_FILE and TLS_KEY_FILE must be set together.');
  }
  return { cert: await readFile(config.tlsCertFile), key: await readFile(config.tlsKeyFile) };
}

export interface RunningBroker { broker: Broker; info: ListenInfo; config: BrokerConfig }

export async function runBroker(env: NodeJS.ProcessEnv = process.env, version = '0.1.0'): Promise<RunningBroker> {
  const config = loadBrokerConfig(env);
  const log = createLogger({ level: config.logLevel, name: 'broker' });
  const verifier = await createVerifierFromConfig(config, log);
  const broker = await buildBroker(config, { verifier, log, tls: await loadTls(config), version });
  const info = await broker.listen();

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    // Whatever happens, the process is gone within the configured bound.
    setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs).unref();
    broker.drain().then(
      ({ leftOpen }) => {
        log.info({ left_open: leftOpen }, 'shutdown complete');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  return { broker, info, config };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runBroker().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
