import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import {
  contractsDir, errorCatalogue, payloadValidator, parseDeviceTopic, topicFor, topics, queues, closeCodes, FleetwireError, mlContract, type ErrorCode, type MlErrorCode,
} from '../src/index.js';
// @ts-expect-error: a plain .mjs script without types
import { errorCodesSource } from '../../scripts/gen-error-codes.mjs';

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

  it('documents every ML result error code, and the TypeScript type has exactly those', () => {
    const codes: MlErrorCode[] = ['timeout', 'rate_limited', 'request_invalid', 'model_unknown', 'version_unknown', 'input_invalid', 'input_too_large', 'internal'];
    expect(Object.keys(mlContract.result_errors).sort()).toEqual([...codes].sort());
    for (const code of codes) expect(docs, code).toContain(`| \`${code}\` | ${mlContract.result_errors[code]} |`);
  });

  it('documents every WebSocket close code', () => {
    for (const [name, c] of Object.entries(closeCodes)) expect(docs, name).toContain(`| ${c.code} | \`${name}\``);
  });

  it('has its code type generated from the contract as it is now', () => {
    const generated = readFileSync(new URL('../src/error-codes.ts', import.meta.url), 'utf8');
    expect(generated, 'run: node scripts/gen-error-codes.mjs').toBe((errorCodesSource as () => string)());
  });

  it('makes a typo in a code a compile error', () => {
    const dir = fileURLToPath(new URL('../src/', import.meta.url));
    const probe = join(dir, '__error_code_probe.ts');
    const source = `import { FleetwireError } from './errors.js';\nnew FleetwireError('AUTH_TOKEN_MISING');\nnew FleetwireError('AUTH_TOKEN_MISSING');\n`;
    const host = ts.createCompilerHost({});
    const readFile = host.readFile.bind(host);
    host.readFile = (f) => (f === probe ? source : readFile(f));
    const fileExists = host.fileExists.bind(host);
    host.fileExists = (f) => f === probe || fileExists(f);
    const program = ts.createProgram([probe], {
      module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2023,
      strict: true, noEmit: true, skipLibCheck: true, types: ['node'],
    }, host);
    const errors = ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === probe);
    expect(errors.map((d) => `${d.file!.getLineAndCharacterOfPosition(d.start!).line + 1}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`))
      .toEqual([expect.stringMatching(/^2: Argument of type '"AUTH_TOKEN_MISING"' is not assignable to parameter of type/)]);
  });

  it('still refuses an unknown code at run time (one that came around the type, by a cast)', () => {
    expect(() => new FleetwireError('NO_SUCH_CODE' as ErrorCode)).toThrow(/unknown error code/);
    expect(new FleetwireError('AUTH_TOKEN_MISSING').toJSON()).toEqual({ error: { code: 'AUTH_TOKEN_MISSING', message: 'No token was offered.' } });
  });
});
