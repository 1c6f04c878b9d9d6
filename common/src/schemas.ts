/** Compiled JSON Schema validators for the payloads in contracts/schemas. */
import { Ajv, type ValidateFunction } from 'ajv';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { contractsDir, readContract, topics } from './contracts.js';

const ajv = new Ajv({ allErrors: false, strict: false });
for (const file of readdirSync(join(contractsDir, 'schemas'))) {
  if (file.endsWith('.schema.json')) ajv.addSchema(readContract<object>(`schemas/${file}`), file);
}

const byClass = new Map<string, ValidateFunction>();
for (const t of topics) byClass.set(t.class, ajv.getSchema(t.schema)!);

/** The validator for a topic class's payload. */
export function payloadValidator(topicClass: string): ValidateFunction {
  const v = byClass.get(topicClass);
  if (!v) throw new Error(`no schema for topic class ${topicClass}`);
  return v;
}

/** The validator for any schema file in contracts/schemas, e.g. 'ingress-envelope.schema.json'. */
export function schemaValidator(file: string): ValidateFunction {
  const v = ajv.getSchema(file);
  if (!v) throw new Error(`no schema ${file} in common/contracts/schemas`);
  return v;
}

/** One readable line for the first validation error. */
export function describeValidationError(v: ValidateFunction): string {
  const e = v.errors?.[0];
  if (!e) return 'invalid payload';
  return `${e.instancePath || '(root)'} ${e.message ?? 'is invalid'}`;
}
