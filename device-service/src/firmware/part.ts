/**
 * Firmware images: POST /v1/firmware (admins upload a signed image), GET /v1/firmware
 * (the list with manifests), GET /v1/firmware/{sha256} (the image: immutable, ETag,
 * Range/If-Range, streamed from disk; devices only the images they were offered).
 */
import type { KeyObject } from 'node:crypto';
import { resolve, join } from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import {
  AuditLog, canonicalJson, FleetwireError, otaPublicKey, otaPublicKeyText, signManifest, tokenState, type Redis, type TokenVerifier,
} from '@fleetwire/common';
import type { DeviceServiceContext, Part } from '../context.js';
import { diskFirmwareStore, type FirmwareStore, type StoredImage } from './storage.js';
import { receiveUpload } from './upload.js';
import { wasOffered } from './offers.js';

const errorBody = { $ref: 'error#' } as const;
const sha256Param = {
  type: 'object', required: ['sha256'], additionalProperties: false,
  properties: { sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' } },
} as const;
const manifestSchema = { type: 'object', additionalProperties: true, description: 'the signed manifest as uploaded (ota-offer.schema.json)' } as const;
const imageSchema = {
  type: 'object',
  properties: {
    sha256: { type: 'string' }, size: { type: 'integer' }, manifest: manifestSchema,
    uploaded_at: { type: 'integer', description: 'unix ms' },
  },
} as const;

/** Images never change under their sha256; devices may cache them for good. */
const CACHE_CONTROL = 'private, max-age=31536000, immutable';

/** `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: a range, 'unsatisfiable', or null (absent, malformed or several: serve the whole image). */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (m[2] !== '' && Number(m[2]) < start) return null;
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

/** Admins, operators and services: any image. Devices (active, token not revoked): only images they were offered. */
function downloadGuard(verifier: TokenVerifier, redis: Redis): (req: FastifyRequest<{ Params: { sha256: string } }>) => Promise<void> {
  return async (req) => {
    const header = req.headers.authorization ?? '';
    const claims = await verifier.verify(header.startsWith('Bearer ') ? header.slice(7).trim() : '');
    const state = await tokenState(redis, claims);
    if (state.revoked) throw new FleetwireError('AUTH_TOKEN_REVOKED');
    req.caller = claims;
    if (claims.typ === 'service' || (claims.typ === 'user' && (claims.role === 'admin' || claims.role === 'operator'))) return;
    if (claims.typ === 'device') {
      if (state.deviceStatus === null) throw new FleetwireError('AUTH_DEVICE_UNKNOWN');
      if (state.deviceStatus !== 'active') throw new FleetwireError('AUTH_DEVICE_REVOKED');
      if (await wasOffered(redis, claims.sub, req.params.sha256)) return;
      throw new FleetwireError('AUTH_FORBIDDEN', 'this device was not offered this image');
    }
    throw new FleetwireError('AUTH_FORBIDDEN', 'downloading firmware needs an admin or operator, a service, or a device the image was offered to');
  };
}

export interface FirmwarePartOptions {
  verifier: TokenVerifier;
  /** Where images are stored; default `<FLEETWIRE_DATA_DIR>/firmware` on disk. */
  store?: FirmwareStore;
  /** OTA_DEV_SIGNING: the server's own development key (dev-signing.ts), trusted and used by POST /v1/firmware/dev-sign. */
  devKey?: { privateKey: KeyObject; publicKey: KeyObject };
}

export function firmwarePart(ctx: DeviceServiceContext, o: FirmwarePartOptions): Part {
  const c = ctx.config;
  const store = o.store ?? diskFirmwareStore(join(resolve(c.dataDir), 'firmware'));
  const keys = c.otaPublicKeys.split(',').map((k) => k.trim()).filter(Boolean).map(otaPublicKey);
  const audit = new AuditLog(ctx.redis, ctx.log, c.auditMaxRecords);
  const download = downloadGuard(o.verifier, ctx.redis);
  const log = ctx.log.child({ part: 'firmware' });
  if (o.devKey) {
    keys.push(o.devKey.publicKey);
    log.warn({ public_key: otaPublicKeyText(o.devKey.publicKey) }, 'OTA_DEV_SIGNING: this server signs firmware manifests with its own development key; give devices this public key');
    devSignRoute(ctx, o.devKey.privateKey);
  }

  // Its own plugin: the multipart parser (which leaves the body to the route) applies to these routes only.
  void ctx.http.register(async (app: FastifyInstance) => {
    app.addContentTypeParser('multipart/form-data', (_req, _payload, done) => done(null, undefined));

    app.post('/v1/firmware', {
      onRequest: ctx.guards.admin,
      schema: {
        tags: ['firmware'], security: [{ bearer: [] }],
        summary: 'Upload a signed firmware image (admin): multipart/form-data, a `manifest` part (the signed manifest JSON) then an `image` part. '
          + '201 when stored, 200 when this image was already stored with the same manifest',
        response: {
          200: { type: 'object', properties: { sha256: { type: 'string' }, manifest: manifestSchema } },
          201: { type: 'object', properties: { sha256: { type: 'string' }, manifest: manifestSchema } },
          400: errorBody, 401: errorBody, 403: errorBody, 409: errorBody, 413: errorBody, 422: errorBody, 503: errorBody,
        },
      },
    }, async (req, reply) => {
      if (keys.length === 0) throw new FleetwireError('FIRMWARE_UPLOADS_DISABLED');
      let result;
      try {
        result = await receiveUpload(req.raw, store, { maxImageBytes: c.otaMaxImageBytes, keys });
      } catch (err) {
        // Whatever of the body is unread is not wanted: close the connection after the answer instead of reading it.
        if (!req.raw.complete) void reply.header('connection', 'close');
        if (err instanceof FleetwireError) log.info({ code: err.code, reason: err.message }, 'firmware upload refused');
        throw err;
      }
      const actor = `${req.caller!.typ}:${req.caller!.sub}`;
      if (!result.created) {
        const stored = await store.stat(result.sha256);
        const { sig: _a, ...had } = stored!.manifest;
        const { sig: _b, ...got } = result.manifest;
        if (canonicalJson(had) !== canonicalJson(got)) {
          throw new FleetwireError('FIRMWARE_CONFLICT', `image ${result.sha256} is already stored with another manifest (version ${stored!.manifest.version}); images are immutable`);
        }
        return reply.code(200).send({ sha256: result.sha256, manifest: stored!.manifest });
      }
      await audit.record({
        type: 'firmware.uploaded', actor, subject: `firmware:${result.sha256}`, ip: req.ip,
        detail: { version: result.manifest.version, size: result.manifest.size, ...(result.manifest.chip ? { chip: result.manifest.chip } : {}) },
      });
      log.info({ sha256: result.sha256, version: result.manifest.version, size: result.manifest.size, actor }, 'firmware image stored');
      return reply.code(201).send({ sha256: result.sha256, manifest: result.manifest });
    });
  });

  ctx.http.get('/v1/firmware', {
    onRequest: ctx.guards.operator,
    schema: {
      tags: ['firmware'], security: [{ bearer: [] }], summary: 'The stored firmware images with their manifests, newest first (admins, operators, services)',
      response: { 200: { type: 'object', properties: { images: { type: 'array', items: imageSchema } } }, 401: errorBody, 403: errorBody },
    },
  }, async () => ({ images: await store.list() }));

  ctx.http.get<{ Params: { sha256: string } }>('/v1/firmware/:sha256', {
    onRequest: download,
    schema: {
      tags: ['firmware'], security: [{ bearer: [] }],
      summary: 'A firmware image\'s bytes: immutable, ETag = its sha256, Range (one range: 206, 416) and If-Range. Admins, operators and services: any image; a device: only images it was offered',
      params: sha256Param,
    },
  }, async (req, reply) => serveImage(req, reply, store));

  return {};
}

async function serveImage(req: FastifyRequest<{ Params: { sha256: string } }>, reply: FastifyReply, store: FirmwareStore): Promise<FastifyReply> {
  const image: StoredImage | null = await store.stat(req.params.sha256);
  if (!image) throw new FleetwireError('NOT_FOUND', `No firmware image ${req.params.sha256}.`);
  const etag = `"${image.sha256}"`;
  void reply.header('etag', etag).header('cache-control', CACHE_CONTROL).header('accept-ranges', 'bytes')
    .header('last-modified', new Date(image.uploaded_at).toUTCString());
  const inm = req.headers['if-none-match'];
  if (inm && inm.split(',').map((t) => t.trim().replace(/^W\//, '')).some((t) => t === etag || t === '*')) return reply.code(304).send();
  const ifRange = req.headers['if-range'] as string | undefined;
  // If-Range with anything but this image's (strong) ETag: the client's copy is another image, send it whole.
  const range = ifRange !== undefined && ifRange.trim() !== etag ? null : parseRange(req.headers.range, image.size);
  if (range === 'unsatisfiable') {
    void reply.header('content-range', `bytes */${image.size}`);
    throw new FleetwireError('FIRMWARE_RANGE_NOT_SATISFIABLE', `the image is ${image.size} bytes; the range ${req.headers.range} starts beyond its end`);
  }
  void reply.type('application/octet-stream');
  if (range) {
    void reply.code(206).header('content-range', `bytes ${range.start}-${range.end}/${image.size}`).header('content-length', range.end - range.start + 1);
    return reply.send(store.read(image.sha256, range));
  }
  void reply.header('content-length', image.size);
  return reply.send(store.read(image.sha256));
}

/**
 * POST /v1/firmware/dev-sign (admin; only with OTA_DEV_SIGNING, which development alone
 * allows): the manifest of an image signed with the server's development key, to upload with
 * POST /v1/firmware like one signed offline.
 */
function devSignRoute(ctx: DeviceServiceContext, privateKey: KeyObject): void {
  ctx.http.post('/v1/firmware/dev-sign', {
    onRequest: ctx.guards.admin,
    schema: {
      tags: ['firmware'], security: [{ bearer: [] }],
      summary: 'Development only (OTA_DEV_SIGNING): sign a manifest with the server\'s development key',
      body: {
        type: 'object', additionalProperties: false, required: ['version', 'size', 'sha256'],
        properties: {
          version: { type: 'string', minLength: 1, maxLength: 64 },
          size: { type: 'integer', minimum: 1 },
          sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
          chip: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{0,31}$' },
          min_version: { type: 'string', minLength: 1, maxLength: 64 },
          url: { type: 'string', minLength: 1, maxLength: 2048 },
        },
      },
      response: { 200: { type: 'object', properties: { manifest: manifestSchema } }, 400: errorBody, 401: errorBody, 403: errorBody },
    },
  }, async (req) => {
    const b = req.body as { version: string; size: number; sha256: string; chip?: string; min_version?: string; url?: string };
    return { manifest: signManifest({ ...b, url: b.url ?? `/v1/firmware/${b.sha256}` }, privateKey) };
  });
}
