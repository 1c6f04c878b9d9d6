/** JSON schemas shared by the auth routes (request validation and response shapes). */
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
    capabilities: { type: 'array', items: { type: 'string' } }, status: { type: 'string', enum: ['active', 'revoked'] },
    created_at: { type: 'integer' }, updated_at: { type: 'integer' }, key_created_at: { type: 'integer' }, revoked_at: { type: 'integer' },
  },
} as const;

export const deviceMetadata = {
  type: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
  name: { type: 'string', maxLength: 200 },
  location: { type: 'string', maxLength: 200 },
  capabilities: { type: 'array', maxItems: 64, uniqueItems: true, items: { type: 'string', minLength: 1, maxLength: 64 } },
} as const;

export const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 128 } } } as const;
