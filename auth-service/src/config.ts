/** Auth service settings: one spec, units in the names, validated and frozen at start-up. */
import {
  auditSpec, baseSpec, serverSpec, serverConfigProblems, bool, int, oneOf, str, url, loadConfig, defaults, FleetwireError, type ConfigOf,
} from '@fleetwire/common';

/** OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); production refuses less unless overridden. */
export const OWASP_MIN = Object.freeze({ memoryKib: 19_456, timeCost: 2, parallelism: 1 });

const PROFILES = {
  production: OWASP_MIN,
  // Cheap enough for tests and laptops; never for real accounts.
  development: Object.freeze({ memoryKib: 4096, timeCost: 1, parallelism: 1 }),
} as const;

export const authSpec = {
  ...baseSpec,
  ...serverSpec,
  // passwords
  argon2Profile: oneOf('ARGON2_PROFILE', 'auto', ['auto', 'development', 'production'] as const,
    'argon2id cost profile; auto = production when NODE_ENV=production, else development'),
  argon2MemoryKib: int('ARGON2_MEMORY_KIB', 0, 'argon2id memory in KiB; 0 = from the profile', { min: 0, max: 4_194_304 }),
  argon2TimeCost: int('ARGON2_TIME_COST', 0, 'argon2id iterations; 0 = from the profile', { min: 0, max: 100 }),
  argon2Parallelism: int('ARGON2_PARALLELISM', 0, 'argon2id lanes; 0 = from the profile', { min: 0, max: 16 }),
  argon2AllowWeak: bool('ARGON2_ALLOW_WEAK', false, 'let NODE_ENV=production start with argon2id parameters below m=19456, t=2, p=1'),
  passwordMinLength: int('PASSWORD_MIN_LENGTH', 12, 'shortest password accepted, in characters', { min: 12, max: 128 }),
  passwordMaxLength: int('PASSWORD_MAX_LENGTH', 128, 'longest password accepted, in characters (bounds hashing work)', { min: 16, max: 1024 }),
  // tokens
  accessTokenTtlS: int('ACCESS_TOKEN_TTL_S', 900, 'user access token lifetime', { min: 60, max: 86_400 }),
  refreshTokenTtlS: int('REFRESH_TOKEN_TTL_S', 2_592_000, 'refresh token lifetime (each use issues a new one)', { min: 300 }),
  deviceTokenTtlS: int('DEVICE_TOKEN_TTL_S', 86_400, 'device token lifetime', { min: 60 }),
  serviceTokenMaxTtlS: int('SERVICE_TOKEN_MAX_TTL_S', 86_400, 'longest service token an admin may mint', { min: 60 }),
  keyActivationDelayS: int('KEY_ACTIVATION_DELAY_S', 60, 'a rotated-in key is published this long before it signs, so every verifier knows it first', { min: 0, max: 3600 }),
  // login protections
  loginPerIp: int('LOGIN_PER_IP', 30, 'login attempts per client IP per LOGIN_IP_WINDOW_S', { min: 1 }),
  loginIpWindowS: int('LOGIN_IP_WINDOW_S', 60, 'sliding window for LOGIN_PER_IP', { min: 1 }),
  loginPerAccount: int('LOGIN_PER_ACCOUNT', 10, 'login attempts per email per LOGIN_ACCOUNT_WINDOW_S, from addresses the account has not logged in from within LOGIN_KNOWN_ADDRESS_S', { min: 1 }),
  loginAccountWindowS: int('LOGIN_ACCOUNT_WINDOW_S', 60, 'sliding window for LOGIN_PER_ACCOUNT', { min: 1 }),
  loginKnownAddressS: int('LOGIN_KNOWN_ADDRESS_S', 2_592_000, 'an address an account logged in from is exempt from LOGIN_PER_ACCOUNT for this long after its last success (the 20 most recent per account)', { min: 0 }),
  lockoutFailures: int('LOCKOUT_FAILURES', 10, 'consecutive failed logins from one address that lock that address (only) out of the account', { min: 1 }),
  lockoutS: int('LOCKOUT_S', 900, 'how long an address stays locked out of an account (an admin unlock lifts every address at once)', { min: 1 }),
  deviceTokenPerIp: int('DEVICE_TOKEN_FAILURES_PER_IP', 60, 'failed API-key exchanges per IP per minute; past it every exchange from that IP gets 429, a right key included', { min: 1 }),
  // password reset
  resetTokenTtlS: int('RESET_TOKEN_TTL_S', 1800, 'password-reset link lifetime', { min: 60, max: 86_400 }),
  resetSender: oneOf('RESET_SENDER', 'outbox', ['outbox', 'webhook'] as const,
    'how reset messages leave: outbox = appended to <FLEETWIRE_DATA_DIR>/outbox.jsonl (development), webhook = POSTed as JSON to RESET_WEBHOOK_URL'),
  resetWebhookUrl: str('RESET_WEBHOOK_URL', '', 'HTTPS endpoint of your mailer for RESET_SENDER=webhook'),
  // first admin, audit
  adminEmail: str('FLEETWIRE_ADMIN_EMAIL', '', 'first admin, created on start when no user exists'),
  adminPassword: str('FLEETWIRE_ADMIN_PASSWORD', '', 'password of FLEETWIRE_ADMIN_EMAIL (read once, never logged)'),
  ...auditSpec,
};

export type AuthConfig = ConfigOf<typeof authSpec>;

export interface Argon2Params { memoryKib: number; timeCost: number; parallelism: number }

/** The argon2id parameters in force: the profile, with any explicit override. */
export function argon2Params(config: AuthConfig): Argon2Params {
  const profileName = config.argon2Profile === 'auto' ? (config.nodeEnv === 'production' ? 'production' : 'development') : config.argon2Profile;
  const profile = PROFILES[profileName];
  return {
    memoryKib: config.argon2MemoryKib || profile.memoryKib,
    timeCost: config.argon2TimeCost || profile.timeCost,
    parallelism: config.argon2Parallelism || profile.parallelism,
  };
}

export function isBelowOwasp(p: Argon2Params): boolean {
  return p.memoryKib < OWASP_MIN.memoryKib || p.timeCost < OWASP_MIN.timeCost;
}

/** Checks what single fields cannot: combinations and production safety. */
export function checkAuthConfig(config: AuthConfig): AuthConfig {
  const problems: string[] = [];
  const params = argon2Params(config);
  if (config.nodeEnv === 'production' && isBelowOwasp(params) && !config.argon2AllowWeak) {
    problems.push(`argon2id m=${params.memoryKib} KiB, t=${params.timeCost} is below m=${OWASP_MIN.memoryKib}, t=${OWASP_MIN.timeCost} ` +
      'in production: use ARGON2_PROFILE=production (or unset it), or set ARGON2_ALLOW_WEAK=true if you really mean it');
  }
  if (config.passwordMaxLength < config.passwordMinLength) problems.push('PASSWORD_MAX_LENGTH must be at least PASSWORD_MIN_LENGTH');
  for (const [name, ttl] of [['DEVICE_TOKEN_TTL_S', config.deviceTokenTtlS], ['SERVICE_TOKEN_MAX_TTL_S', config.serviceTokenMaxTtlS], ['ACCESS_TOKEN_TTL_S', config.accessTokenTtlS]] as const) {
    if (ttl > config.keyRetireAfterS) problems.push(`${name}=${ttl} outlives KEY_RETIRE_AFTER_S=${config.keyRetireAfterS}: tokens would outlive their key after a rotation`);
  }
  if (config.resetSender === 'webhook') {
    try {
      url('RESET_WEBHOOK_URL', '', '', ['https:', 'http:']).parse(config.resetWebhookUrl);
    } catch {
      problems.push('RESET_SENDER=webhook needs RESET_WEBHOOK_URL set to an http(s) URL');
    }
  }
  if (Boolean(config.adminEmail) !== Boolean(config.adminPassword)) {
    problems.push('set FLEETWIRE_ADMIN_EMAIL and FLEETWIRE_ADMIN_PASSWORD together');
  }
  problems.push(...serverConfigProblems(config));
  if (problems.length) throw new FleetwireError('CONFIG_INVALID', `Invalid configuration:\n  - ${problems.join('\n  - ')}`);
  return config;
}

export function loadAuthConfig(env: NodeJS.ProcessEnv = process.env): AuthConfig {
  return checkAuthConfig(loadConfig(authSpec, env));
}

export function authDefaults(overrides: Partial<AuthConfig> = {}): AuthConfig {
  return checkAuthConfig(defaults(authSpec, overrides));
}
