/** JWKS, signing-key rotation, service tokens, the audit log and the spec. */
import type { FastifyInstance } from 'fastify';
import { AUDIT_TYPES, queryInteger, signToken, type AuditLog, type AuditQuery, type Guard, type KeyRing } from '@fleetwire/common';
import type { AuthConfig } from '../config.js';
import { errorResponse } from './schemas.js';

export interface AdminRouteDeps {
  config: AuthConfig;
  keys: KeyRing;
  audit: AuditLog;
  admin: Guard;
  spec: () => Promise<Record<string, unknown>>;
}

export function adminRoutes(app: FastifyInstance, { config, keys, audit, admin, spec }: AdminRouteDeps): void {
  const security = [{ bearer: [] }];

  app.get('/.well-known/jwks.json', {
    schema: { tags: ['keys'], summary: 'Public signing keys (Ed25519), including the next key and recently replaced ones' },
  }, async (_req, reply) => {
    // Short caching: verifiers also refetch when they meet an unknown kid.
    void reply.header('cache-control', 'public, max-age=60');
    return { keys: keys.publicJwks };
  });

  app.post<{ Body: { activate_in_s?: number } }>('/v1/keys/rotate', {
    onRequest: admin,
    schema: {
      tags: ['keys'], security,
      summary: 'Add a signing key; it is published at once and signs after activate_in_s (default KEY_ACTIVATION_DELAY_S)',
      body: { type: ['object', 'null'], properties: { activate_in_s: { type: 'integer', minimum: 0, maximum: 3600 } } },
      response: { 200: { type: 'object', properties: { kid: { type: 'string' }, signs_from: { type: 'integer' } } }, 403: errorResponse },
    },
  }, async (req) => {
    const delayS = req.body?.activate_in_s ?? config.keyActivationDelayS;
    const kid = await keys.rotate(delayS * 1000);
    await audit.record({ type: 'signing-key.rotated', actor: `user:${req.caller!.sub}`, subject: `key:${kid}`, ip: req.ip, detail: { activate_in_s: delayS } });
    return { kid, signs_from: Date.now() + delayS * 1000 };
  });

  app.post<{ Body: { name: string; ttl_s?: number } }>('/v1/service-tokens', {
    onRequest: admin,
    schema: {
      tags: ['keys'], security, summary: 'Mint a token for a backend service (MQTT over WebSocket or the service TCP listener, and the HTTP API)',
      body: {
        type: 'object', required: ['name'],
        properties: { name: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{1,63}$' }, ttl_s: { type: 'integer', minimum: 60, maximum: config.serviceTokenMaxTtlS } },
      },
      response: { 200: { type: 'object', properties: { token: { type: 'string' }, expires_in: { type: 'integer' } } }, 403: errorResponse },
    },
  }, async (req) => {
    const ttl = req.body.ttl_s ?? config.serviceTokenMaxTtlS;
    const token = await signToken(keys.signer, { sub: req.body.name, typ: 'service', ttlSeconds: ttl });
    await audit.record({ type: 'service-token.issued', actor: `user:${req.caller!.sub}`, subject: `service:${req.body.name}`, ip: req.ip, detail: { ttl_s: ttl } });
    return { token, expires_in: ttl };
  });

  app.get<{ Querystring: Omit<AuditQuery, 'limit'> & { limit: number } }>('/v1/audit', {
    onRequest: admin,
    schema: {
      tags: ['audit'], security, summary: 'Audit records, newest first; pass `next` back as `before` for the following page',
      querystring: {
        type: 'object',
        properties: {
          type: { type: 'string', enum: [...AUDIT_TYPES] }, actor: { type: 'string', maxLength: 300 }, subject: { type: 'string', maxLength: 300 },
          since: queryInteger({ description: 'Unix ms' }), until: queryInteger({ description: 'Unix ms' }),
          before: { type: 'string', pattern: '^[0-9]{1,15}-[0-9]{1,15}$' }, limit: queryInteger({ minimum: 1, maximum: 1000, default: 100 }),
        },
      },
      response: {
        200: {
          type: 'object',
          properties: {
            records: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  id: { type: 'string' }, at: { type: 'integer' }, type: { type: 'string' }, actor: { type: 'string' }, subject: { type: 'string' },
                  ip: { type: 'string' }, outcome: { type: 'string' }, detail: { type: 'object', additionalProperties: true },
                },
              },
            },
            next: { type: ['string', 'null'] },
          },
        },
      },
    },
  }, async (req) => audit.query(req.query));

  app.get('/v1/spec', {
    onRequest: admin,
    schema: { tags: ['admin'], security, summary: 'Version, commit, features, parameters and limits in force (never secrets)' },
  }, async () => spec());
}
