/** The auth service's part of `fleetwire spec` and GET /v1/spec: settings in force, never secrets. */
import type { Redis } from 'ioredis';
import { redisKeys } from '@fleetwire/common';
import { argon2Params, isBelowOwasp, type AuthConfig } from './config.js';

/** The service's name: its CLI command and its section of the spec. */
export const AUTH_SERVICE = 'auth-service';

export interface AccountCounts { users: number; legacyAccounts: number; devices: number }

export async function accountCounts(redis: Redis): Promise<AccountCounts> {
  const [users, legacyAccounts, devices] = await Promise.all([
    redis.zcard(redisKeys.users), redis.scard(redisKeys.legacyUsers), redis.zcard(redisKeys.devices),
  ]);
  return { users, legacyAccounts, devices };
}

export function authSpecReport(config: AuthConfig, counts: AccountCounts | null): Record<string, unknown> {
  const p = argon2Params(config);
  return {
    argon2id: { memory_kib: p.memoryKib, time_cost: p.timeCost, parallelism: p.parallelism, below_owasp_minimum: isBelowOwasp(p) },
    password_policy: { min_length: config.passwordMinLength, max_length: config.passwordMaxLength, common_password_list: true },
    token_lifetimes_s: {
      access: config.accessTokenTtlS, refresh: config.refreshTokenTtlS, device: config.deviceTokenTtlS,
      service_max: config.serviceTokenMaxTtlS, password_reset: config.resetTokenTtlS,
    },
    signing_keys: { algorithm: 'EdDSA (Ed25519)', activation_delay_s: config.keyActivationDelayS, retire_after_s: config.keyRetireAfterS },
    limits: {
      login_per_ip: `${config.loginPerIp} per ${config.loginIpWindowS} s`,
      login_per_account: `${config.loginPerAccount} per ${config.loginAccountWindowS} s, except from addresses that logged in to the account within ${config.loginKnownAddressS} s`,
      lockout: `${config.lockoutFailures} consecutive failures from one address lock that address out of the account for ${config.lockoutS} s`,
      device_token_failures_per_ip: `${config.deviceTokenPerIp} per 60 s`,
    },
    reset_sender: config.resetSender,
    first_admin_from_env: Boolean(config.adminEmail),
    accounts: counts
      ? { users: counts.users, legacy_password_hashes: counts.legacyAccounts, devices: counts.devices }
      : 'unavailable (Redis not reachable)',
  };
}
