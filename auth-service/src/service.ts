/** The auth service as a Fleetwire service: `fleetwire auth-service` alone, or one of `fleetwire up`. */
import type { ServiceDefinition } from '@fleetwire/common';
import { buildAuthService } from './app.js';
import { authCommands } from './commands.js';
import { loadAuthConfig, type AuthConfig } from './config.js';
import { accountCounts, authSpecReport, AUTH_SERVICE } from './spec.js';

export const service: ServiceDefinition<AuthConfig> = {
  name: AUTH_SERVICE,
  summary: 'users, sessions, devices and API keys, signing keys and JWKS, audit',
  loadConfig: loadAuthConfig,
  spec: async (config, redis) => authSpecReport(config, redis ? await accountCounts(redis).catch(() => null) : null),
  async build(config, deps) {
    const auth = await buildAuthService(config, {
      http: deps.http, keys: await deps.keyRing(), redis: deps.redis, log: deps.log, metricsRegistry: deps.metricsRegistry,
      version: deps.version, spec: deps.spec,
    });
    return {
      // Password-reset messages still being sent finish before the process goes.
      drain: () => auth.accounts.settled(),
      close: () => auth.close(),
    };
  },
  commands: authCommands,
};
