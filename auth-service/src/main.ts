/** Auth service entry: env → validated config → listen → SIGTERM drain. */
import { pathToFileURL } from 'node:url';
import { createLogger, exitOnSignal, readTls } from '@fleetwire/common';
import { buildAuthService, type AuthService } from './app.js';
import { loadAuthConfig, type AuthConfig } from './config.js';

export interface RunningAuthService { auth: AuthService; port: number; config: AuthConfig }

export async function runAuthService(env: NodeJS.ProcessEnv = process.env, version = '0.1.0'): Promise<RunningAuthService> {
  const config = loadAuthConfig(env);
  const log = createLogger({ level: config.logLevel, name: 'auth' });
  const auth = await buildAuthService(config, { log, tls: await readTls(config), version });
  const port = await auth.listen();
  exitOnSignal(log, 10_000, () => auth.close());
  return { auth, port, config };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runAuthService().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
