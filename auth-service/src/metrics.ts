/** The auth service's Prometheus metrics. */
import { Counter, Gauge, Histogram, type Registry } from '@fleetwire/common';

export type AuthMetrics = ReturnType<typeof createAuthMetrics>;

export function createAuthMetrics(registry: Registry, legacyAccounts: () => Promise<number>) {
  return {
    logins: new Counter({
      name: 'fleetwire_auth_logins_total', help: 'Login attempts by outcome',
      labelNames: ['outcome'] as const, registers: [registry],
    }),
    loginSeconds: new Histogram({
      name: 'fleetwire_auth_login_seconds', help: 'Time to answer a login that reached password verification',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [registry],
    }),
    lockouts: new Counter({ name: 'fleetwire_auth_lockouts_total', help: 'Addresses locked out of an account after too many failed logins from them', registers: [registry] }),
    refreshes: new Counter({
      name: 'fleetwire_auth_refreshes_total', help: 'Refresh-token uses by outcome (reused = a rotated token came back)',
      labelNames: ['outcome'] as const, registers: [registry],
    }),
    deviceTokens: new Counter({
      name: 'fleetwire_auth_device_tokens_total', help: 'API-key exchanges for device tokens by outcome',
      labelNames: ['outcome'] as const, registers: [registry],
    }),
    legacyAccounts: new Gauge({
      name: 'fleetwire_auth_legacy_password_accounts', help: 'Accounts still on a legacy (pre-argon2id) password hash',
      registers: [registry],
      async collect() { this.set(await legacyAccounts()); },
    }),
  };
}
