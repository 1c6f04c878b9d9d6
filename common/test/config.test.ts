import { describe, expect, it } from 'vitest';
import { int, loadConfig, oneOf, url, list, bool, FleetwireError } from '../src/index.js';

const spec = {
  port: int('PORT', 8080, 'HTTP port', { min: 1, max: 65535 }),
  mode: oneOf('MODE', 'a', ['a', 'b'] as const, 'a or b'),
  redis: url('REDIS_URL', 'redis://127.0.0.1:6379', 'Redis URL', ['redis:']),
  proxies: list('PROXIES', [], 'CIDRs'),
  on: bool('ON', false, 'switch'),
};

describe('config', () => {
  it('uses defaults and returns a frozen object', () => {
    const c = loadConfig(spec, {});
    expect(c).toEqual({ port: 8080, mode: 'a', redis: 'redis://127.0.0.1:6379', proxies: [], on: false });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('parses values from the environment', () => {
    expect(loadConfig(spec, { PORT: '9000', MODE: 'b', PROXIES: '10.0.0.0/8, 127.0.0.1', ON: 'yes' }))
      .toMatchObject({ port: 9000, mode: 'b', proxies: ['10.0.0.0/8', '127.0.0.1'], on: true });
  });

  it('fails naming every bad variable, its value and what is expected', () => {
    let err: unknown;
    try {
      loadConfig(spec, { PORT: '80x', MODE: 'c', REDIS_URL: 'http://x', ON: 'maybe' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FleetwireError);
    const msg = (err as Error).message;
    expect((err as FleetwireError).code).toBe('CONFIG_INVALID');
    expect(msg).toContain('PORT="80x": expected a whole number from 1 to 65535 (HTTP port)');
    expect(msg).toContain('MODE="c": expected one of a, b');
    expect(msg).toContain('REDIS_URL="http://x": expected a redis: URL');
    expect(msg).toContain('ON="maybe": expected true or false');
  });
});
