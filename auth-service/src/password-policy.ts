/** Password policy: bounded length and not a commonly used password. */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { FleetwireError } from '@fleetwire/common';

const LIST_FILE = new URL('../data/common-passwords.txt.gz', import.meta.url);

let commonPasswords: ReadonlySet<string> | null = null;

/** The shipped list (see data/README.md), loaded once per process. */
export function loadCommonPasswords(): ReadonlySet<string> {
  commonPasswords ??= new Set(gunzipSync(readFileSync(LIST_FILE)).toString('utf8').split('\n').filter(Boolean));
  return commonPasswords;
}

export class PasswordPolicy {
  private readonly common = loadCommonPasswords();

  constructor(readonly minLength: number, readonly maxLength: number) {}

  /** Throws AUTH_PASSWORD_POLICY naming every rule the password breaks (never echoing it). */
  check(password: string, email?: string): void {
    const problems: string[] = [];
    const length = [...password].length;
    if (length < this.minLength) problems.push(`it must be at least ${this.minLength} characters long`);
    if (length > this.maxLength) problems.push(`it must be at most ${this.maxLength} characters long`);
    const lower = password.toLowerCase();
    if (this.common.has(lower)) problems.push('it is on the list of commonly used passwords');
    if (email && (lower === email.toLowerCase() || lower === email.split('@')[0]!.toLowerCase())) {
      problems.push('it must not be the email address');
    }
    if (problems.length) throw new FleetwireError('AUTH_PASSWORD_POLICY', `The password does not meet the policy: ${problems.join('; ')}.`);
  }
}
