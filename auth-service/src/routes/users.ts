/** /v1/users: admins create, list and unlock users. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, pageQuery, type Guard, type UserRole } from '@fleetwire/common';
import type { Accounts } from '../accounts.js';
import type { UserStore } from '../users.js';
import { email, errorResponse, idParam, password, role, user } from './schemas.js';

export interface UserRouteDeps { accounts: Accounts; users: UserStore; admin: Guard }

export function userRoutes(app: FastifyInstance, { accounts, users, admin }: UserRouteDeps): void {
  const tags = ['users'];
  const security = [{ bearer: [] }];

  app.post<{ Body: { email: string; password: string; role: UserRole } }>('/v1/users', {
    onRequest: admin,
    schema: {
      tags, security, summary: 'Create a user',
      body: { type: 'object', required: ['email', 'password', 'role'], properties: { email, password, role } },
      response: { 201: user, 400: errorResponse, 403: errorResponse, 409: errorResponse },
    },
  }, async (req, reply) => reply.code(201).send(await accounts.createUser(req.body, `user:${req.caller!.sub}`, req.ip)));

  app.get<{ Querystring: { offset: number; limit: number } }>('/v1/users', {
    onRequest: admin,
    schema: {
      tags, security, summary: 'List users, oldest first',
      querystring: { type: 'object', properties: pageQuery(500) },
      response: { 200: { type: 'object', properties: { users: { type: 'array', items: user }, total: { type: 'integer' } } } },
    },
  }, async (req) => users.list(req.query.offset, req.query.limit));

  app.get<{ Params: { id: string } }>('/v1/users/:id', {
    onRequest: admin,
    schema: { tags, security, summary: 'One user, with how long the longest lock on any address lasts (locked_for_s)', params: idParam, response: { 200: user, 404: errorResponse } },
  }, async (req) => {
    const u = await users.byId(req.params.id);
    if (!u) throw new FleetwireError('NOT_FOUND', `No user ${req.params.id}.`);
    return { ...u, locked_for_s: await accounts.lockRemainingS(u) };
  });

  app.patch<{ Params: { id: string }; Body: { role: UserRole } }>('/v1/users/:id', {
    onRequest: admin,
    schema: {
      tags, security, summary: 'Change a user\'s role; their current tokens are revoked so the new role applies at once',
      params: idParam, body: { type: 'object', required: ['role'], properties: { role } },
      response: { 200: user, 404: errorResponse, 409: errorResponse },
    },
  }, async (req) => accounts.changeRole(req.params.id, req.body.role, `user:${req.caller!.sub}`, req.ip));

  app.delete<{ Params: { id: string } }>('/v1/users/:id', {
    onRequest: admin,
    schema: {
      tags, security, summary: 'Delete a user: sessions end, tokens are revoked, MQTT connections close',
      params: idParam, response: { 204: { type: 'null' }, 404: errorResponse, 409: errorResponse },
    },
  }, async (req, reply) => {
    await accounts.deleteUser(req.params.id, `user:${req.caller!.sub}`, req.ip);
    return reply.code(204).send();
  });

  app.post<{ Params: { id: string } }>('/v1/users/:id/unlock', {
    onRequest: admin,
    schema: {
      tags, security, summary: 'Unlock an account: lifts the lock of every address, resets the failure counts and empties the per-account login window', params: idParam,
      response: { 200: { type: 'object', properties: { was_locked: { type: 'boolean' } } }, 404: errorResponse },
    },
  }, async (req) => accounts.unlock(req.params.id, `user:${req.caller!.sub}`, req.ip));
}
