/** JSON schemas shared by the auth routes (request validation and response shapes). */
import { DEVICE_TAG_PATTERN, MAX_DEVICE_TAGS } from '../devices.js';

export const email = { type: 'string', format: 'email', maxLength: 254 } as const;
/** Login accepts up to 1024 characters so over-long guesses are refused before hashing; the policy bounds new passwords. */
export const password = { type: 'string', minLength: 1, maxLength: 1024 } as const;
export const role = { type: 'string', enum: ['admin', 'operator', 'viewer'] } as const;
export const errorResponse = { $ref: 'error#' } as const;

export const user = {
  type: 'object',
  properties: {
    id: { type: 'string' }, email: { type: 'string' }, role: { type: 'string' },
    created_at: { type: 'integer' }, updated_at: { type: 'integer' }, password_changed_at: { type: 'integer' },
    created_by: { type: 'string' }, locked_for_s: { type: 'integer' },
  },
} as const;

export const tokenPair = {
  type: 'object',
  properties: {
    access_token: { type: 'string' }, refresh_token: { type: 'string' },
    token_type: { type: 'string' }, expires_in: { type: 'integer' },
  },
} as const;

export const device = {
  type: 'object',
  properties: {
    id: { type: 'string' }, type: { type: 'string' }, name: { type: 'string' }, location: { type: 'string' },
    capabilities: { type: 'array', items: { type: 'string' } }, tags: { type: 'array', items: { type: 'string' } },
    status: { type: 'string', enum: ['active', 'revoked'] },
    maintenance_until: { type: ['integer', 'null'], description: 'Unix ms until which silence alerts are muted, as set (also once passed); null when none' },
    created_at: { type: 'integer' }, updated_at: { type: 'integer' }, key_created_at: { type: 'integer' }, revoked_at: { type: 'integer' },
    online: { type: 'boolean', description: "Connected now, from the device service's presence; false for a device never seen" },
    last_seen: { type: ['integer', 'null'], description: 'Unix ms of the last heartbeat recorded; null for a device never seen' },
  },
} as const;

export const deviceTag = { type: 'string', pattern: DEVICE_TAG_PATTERN } as const;

export const deviceMetadata = {
  type: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
  name: { type: 'string', maxLength: 200 },
  location: { type: 'string', maxLength: 200, description: 'Matched exactly by the location filter; an empty string clears it' },
  capabilities: { type: 'array', maxItems: 64, uniqueItems: true, items: { type: 'string', minLength: 1, maxLength: 64 } },
  tags: { type: 'array', maxItems: MAX_DEVICE_TAGS, uniqueItems: true, items: deviceTag, description: 'Replaces the tags as a whole' },
  maintenance_until: {
    type: ['integer', 'null'], minimum: 0, maximum: Number.MAX_SAFE_INTEGER,
    description: 'Unix ms, in the future, until which silence alerts are muted; null ends maintenance',
  },
} as const;

export const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 128 } } } as const;
