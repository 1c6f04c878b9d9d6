#!/usr/bin/env node
// Sums every suite's results in .test-results/ into the one closing line `N passed, N failed`.
// Each suite leaves either a vitest JSON report (*.json) or a `<suite>.counts` file "passed failed".
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? '.test-results';
let passed = 0;
let failed = 0;
const lines = [];
for (const file of readdirSync(dir).sort()) {
  const path = join(dir, file);
  if (file.endsWith('.json')) {
    const r = JSON.parse(readFileSync(path, 'utf8'));
    // A file that failed with no failing test (it did not load, or a beforeAll/afterAll hook
    // failed or timed out) counts as one failure too.
    const fileFailures = (r.testResults ?? [])
      .filter((t) => t.status === 'failed' && !(t.assertionResults ?? []).some((a) => a.status === 'failed')).length;
    passed += r.numPassedTests;
    failed += r.numFailedTests + fileFailures;
    lines.push(`${file.replace('.json', '')}: ${r.numPassedTests} passed, ${r.numFailedTests + fileFailures} failed`);
  } else if (file.endsWith('.counts')) {
    const [p, f] = readFileSync(path, 'utf8').trim().split(/\s+/).map(Number);
    passed += p;
    failed += f;
    lines.push(`${file.replace('.counts', '')}: ${p} passed, ${f} failed`);
  }
}
for (const l of lines) console.log(`  ${l}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
