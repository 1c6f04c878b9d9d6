#!/usr/bin/env node
// Writes common/src/error-codes.ts from common/contracts/errors.json, so an error code that
// is not in the contract fails to compile. common/test/contracts.test.ts fails when the two
// differ; run `node scripts/gen-error-codes.mjs` after editing errors.json.
import { readFileSync, writeFileSync } from 'node:fs';

const root = new URL('../common/', import.meta.url);
export function errorCodesSource() {
  const codes = Object.keys(JSON.parse(readFileSync(new URL('contracts/errors.json', root), 'utf8')).errors);
  return [
    '// Generated from contracts/errors.json by scripts/gen-error-codes.mjs; do not edit.',
    'export const errorCodes = [',
    ...codes.map((c) => `  '${c}',`),
    '] as const;',
    '',
    'export type ErrorCode = (typeof errorCodes)[number];',
    '',
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  writeFileSync(new URL('src/error-codes.ts', root), errorCodesSource());
}
