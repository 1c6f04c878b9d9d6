/**
 * Headers on every HTTP answer of every service (OWASP REST Security Cheat Sheet):
 * answers carry tokens, refresh tokens and API keys, so nothing is stored by browsers or
 * proxies unless a route chose its own caching (the JWKS); no MIME sniffing; no Referer
 * leaves a page of ours; JSON may not be framed or run as a page. /docs, the one HTML
 * page, gets a policy of its own (DOCS_CSP) from @fastify/swagger-ui. HSTS only when this
 * port serves TLS: browsers ignore it over plain HTTP (RFC 6797 §8.1).
 */
import type { FastifyInstance } from 'fastify';

export const API_CSP = "default-src 'none'; frame-ancestors 'none'";

/** Swagger UI loads its scripts, styles and images from /docs/static and calls /docs/json: nothing inline, nothing foreign. */
export const DOCS_CSP = "default-src 'self'; base-uri 'self'; connect-src 'self'; font-src 'self' data:; form-action 'self'; " +
  "frame-ancestors 'none'; img-src 'self' data:; object-src 'none'; script-src 'self'; script-src-attr 'none'; style-src 'self'";

export const HSTS = 'max-age=31536000; includeSubDomains';

/** Must run before any plugin or route is registered, so that every one of them inherits the hook. */
export function securityHeaders(app: FastifyInstance, opts: { tls: boolean }): void {
  app.addHook('onSend', async (_req, reply) => {
    if (!reply.hasHeader('cache-control')) void reply.header('cache-control', 'no-store');
    void reply.header('x-content-type-options', 'nosniff');
    void reply.header('referrer-policy', 'no-referrer');
    // /docs replaces this with DOCS_CSP in its own onSend hook, which runs after this one.
    void reply.header('content-security-policy', API_CSP);
    if (opts.tls) void reply.header('strict-transport-security', HSTS);
  });
}
