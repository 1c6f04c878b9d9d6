/** @fleetwire/common: the only package every service imports. */
export * from './config.js';
export * from './errors.js';
export * from './contracts.js';
export * from './logger.js';
export * from './redis.js';
export * from './redis-keys.js';
export * from './revocation.js';
export * from './metrics.js';
export * from './keys.js';
export * from './jwt.js';
export * from './schemas.js';
export * from './http.js';
export * from './http-auth.js';
export * from './build-info.js';
export * from './shutdown.js';
export * from './client-address.js';
export * from './log-throttle.js';
