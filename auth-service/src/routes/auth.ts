/** /v1/auth: login, refresh, logout, me, password change and reset. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, type FleetwireClaims, type Guard } from '@fleetwire/common';
import type { Accounts } from '../accounts.js';
import type { UserStore } from '../users.js';
import { email, errorResponse, password, tokenPair, user } from './schemas.js';

export interface AuthRouteDeps { accounts: Accounts; users: UserStore; requireUser: Guard }

export function authRoutes(app: FastifyInstance, { accounts, users, requireUser }: AuthRouteDeps): void {
  const tags = ['auth'];

  app.post<{ Body: { email: string; password: string } }>('/v1/auth/login', {
    schema: {
      tags, summary: 'Log in with email and password',
      description: 'Limited per client IP and per account (429 with Retry-After) before any hashing; repeated failures from one address lock that address out of the account. Addresses the account recently logged in from are exempt from the per-account limit.',
      body: { type: 'object', required: ['email', 'password'], properties: { email: { type: 'string', minLength: 1, maxLength: 254 }, password } },
      response: { 200: tokenPair, 401: errorResponse, 429: errorResponse },
    },
  }, async (req) => accounts.login(req.body.email, req.body.password, req.ip));

  app.post<{ Body: { refresh_token: string } }>('/v1/auth/refresh', {
    schema: {
      tags, summary: 'Exchange a refresh token for a new pair',
      description: 'Each refresh token works once. Presenting one that was already used revokes its whole session.',
      body: { type: 'object', required: ['refresh_token'], properties: { refresh_token: { type: 'string', minLength: 1, maxLength: 200 } } },
      response: { 200: tokenPair, 401: errorResponse },
    },
  }, async (req) => accounts.refresh(req.body.refresh_token, req.ip));

  app.post('/v1/auth/logout', {
    onRequest: requireUser,
    schema: { tags, summary: 'End this session', security: [{ bearer: [] }], response: { 204: { type: 'null' }, 401: errorResponse } },
  }, async (req, reply) => {
    await accounts.logout(req.caller as FleetwireClaims & { sid?: string }, req.ip);
    return reply.code(204).send();
  });

  app.get('/v1/auth/me', {
    onRequest: requireUser,
    schema: { tags, summary: 'The logged-in user', security: [{ bearer: [] }], response: { 200: user, 401: errorResponse } },
  }, async (req) => {
    const me = await users.byId(req.caller!.sub);
    if (!me) throw new FleetwireError('NOT_FOUND', 'This user no longer exists.');
    return me;
  });

  app.post<{ Body: { current_password: string; new_password: string } }>('/v1/auth/password', {
    onRequest: requireUser,
    schema: {
      tags, summary: 'Change your password (ends every session)', security: [{ bearer: [] }],
      body: { type: 'object', required: ['current_password', 'new_password'], properties: { current_password: password, new_password: password } },
      response: { 204: { type: 'null' }, 400: errorResponse, 403: errorResponse, 429: errorResponse },
    },
  }, async (req, reply) => {
    await accounts.changePassword(req.caller!.sub, req.body.current_password, req.body.new_password, req.ip);
    return reply.code(204).send();
  });

  app.post<{ Body: { email: string } }>('/v1/auth/password-reset/request', {
    schema: {
      tags, summary: 'Ask for a password-reset link',
      description: 'Always 202, whether or not the address has an account.',
      body: { type: 'object', required: ['email'], properties: { email } },
      response: { 202: { type: 'object', properties: { status: { type: 'string' } } }, 429: errorResponse },
    },
  }, async (req, reply) => {
    await accounts.requestReset(req.body.email, req.ip);
    return reply.code(202).send({ status: 'If this address has an account, a reset link is on its way.' });
  });

  app.post<{ Body: { token: string; new_password: string } }>('/v1/auth/password-reset/confirm', {
    schema: {
      tags, summary: 'Set a new password with a reset token (ends every session)',
      body: { type: 'object', required: ['token', 'new_password'], properties: { token: { type: 'string', minLength: 1, maxLength: 200 }, new_password: password } },
      response: { 204: { type: 'null' }, 400: errorResponse, 429: errorResponse },
    },
  }, async (req, reply) => {
    await accounts.confirmReset(req.body.token, req.body.new_password, req.ip);
    return reply.code(204).send();
  });
}
