import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  contractsDir, errorCatalogue, payloadValidator, parseDeviceTopic, topicFor, topics, queues, closeCodes, FleetwireError,
} from '../src/index.js';

const fixtures = (kind: 'valid' | 'invalid') =>
  readdirSync(join(contractsDir, 'fixtures', kind)).map((f) => ({ cls: f.replace('.json', ''), body: JSON.parse(readFileSync(join(contractsDir, 'fixtures', kind, f), 'utf8')) }));

describe('contracts', () => {
  it('accepts every valid golden fixture and refuses every invalid one', () => {
    for (const { cls, body } of fixtures('valid')) expect(payloadValidator(cls)(body), `valid/${cls}`).toBe(true);
    for (const { cls, body } of fixtures('invalid')) expect(payloadValidator(cls)(body), `invalid/${cls}`).toBe(false);
  });

  it('maps topics to device id and class both ways', () => {
    for (const t of topics) {
      const topic = topicFor(t.class, 'dev-7');
      expect(parseDeviceTopic(topic)).toEqual({ deviceId: 'dev-7', entry: t });
    }
    expect(parseDeviceTopic('devices/dev-7/unknown')).toBeNull();
    expect(parseDeviceTopic('devices/dev-7')).toBeNull();
    expect(parseDeviceTopic('fleet/presence/a/b')).toBeNull();
  });

  it('routes every queued topic class to a queue that exists', () => {
    for (const t of topics.filter((x) => x.queue)) expect(queues.queues[t.queue!], t.class).toBeDefined();
    expect(queues.prefix).toBe('fleetwire');
  });

  it('keeps close codes unique and in the application range', () => {
    const codes = Object.values(closeCodes).map((c) => c.code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(c >= 4000 && c <= 4999).toBe(true);
  });
});

describe('error catalogue', () => {
  const docs = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');

  it('has prefixed, unique codes, each documented in docs/errors.md with its status', () => {
    for (const [code, e] of Object.entries(errorCatalogue)) {
      expect(code).toMatch(/^[A-Z]+_[A-Z_]+$/);
      expect(docs, code).toMatch(new RegExp(`\\| \`${code}\` \\| ${e.status} \\|`));
    }
  });

  it('documents every WebSocket close code', () => {
    for (const [name, c] of Object.entries(closeCodes)) expect(docs, name).toContain(`| ${c.code} | \`${name}\``);
  });

  it('refuses an unknown code so a typo cannot ship', () => {
    expect(() => new FleetwireError('NO_SUCH_CODE')).toThrow(/unknown error code/);
    expect(new FleetwireError('AUTH_TOKEN_MISSING').toJSON()).toEqual({ error: { code: 'AUTH_TOKEN_MISSING', message: 'No token was offered.' } });
  });
});
