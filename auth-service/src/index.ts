/** @fleetwire/auth-service public API. */
export { buildAuthService, type AuthService, type AuthServiceDeps } from './app.js';
export { authSpec, loadAuthConfig, authDefaults, argon2Params, type AuthConfig } from './config.js';
export { service as authService } from './service.js';
export { authCommands } from './commands.js';
export { importLegacyUsers, type ImportReport } from './legacy-import.js';
export { accountCounts, authSpecReport, type AccountCounts } from './spec.js';
export { OutboxSender, WebhookSender, type MessageSender, type OutgoingMessage } from './senders.js';
