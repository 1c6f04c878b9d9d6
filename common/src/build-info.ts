/** What build is running: for `fleetwire spec`, GET /v1/spec and logs. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

let commit: string | null = null;

/** FLEETWIRE_COMMIT (set by image builds), else the checkout's HEAD, else "unknown". */
export function gitCommit(): string {
  if (commit !== null) return commit;
  commit = process.env.FLEETWIRE_COMMIT ?? '';
  if (!commit) {
    try {
      commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
        cwd: fileURLToPath(new URL('.', import.meta.url)), stdio: ['ignore', 'pipe', 'ignore'],
      }).toString().trim();
    } catch {
      commit = 'unknown';
    }
  }
  return commit;
}

/** The repository root: common/src or common/dist is two levels below it. */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** The `version` of the root package.json: the release of the whole stack. */
export const fleetwireVersion: string = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
