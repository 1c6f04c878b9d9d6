/**
 * `fleetwire users import FILE.jsonl`: accounts from the previous system, one
 * JSON object per line: {"email": "...", "password_hash": "...", "role": "viewer"}.
 * Hashes are SHA-256 hex, bare (`<64 hex>`) or salted (`sha256$<salt>$<64 hex>`).
 * They stay as they are until each user's first login replaces them with argon2id.
 *
 * The whole file is checked first: one bad line imports nothing, and every bad
 * line is reported with its number. Emails already present are left unchanged.
 */
import { jwtContract, type AuditLog, type UserRole } from '@fleetwire/common';
import { isLegacyHash } from './passwords.js';
import type { UserStore } from './users.js';

export interface ImportReport {
  imported: number;
  skipped_existing: number;
  errors: { line: number; message: string }[];
}

interface LegacyUser { email: string; password_hash: string; role: UserRole }

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export function parseLegacyFile(text: string): { users: { line: number; user: LegacyUser }[]; errors: ImportReport['errors'] } {
  const users: { line: number; user: LegacyUser }[] = [];
  const errors: ImportReport['errors'] = [];
  const seen = new Map<string, number>();
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    if (!raw.trim()) return;
    let v: Partial<Record<keyof LegacyUser, unknown>>;
    try {
      v = JSON.parse(raw) as typeof v;
    } catch {
      errors.push({ line, message: 'not valid JSON' });
      return;
    }
    const email = typeof v.email === 'string' ? v.email.trim().toLowerCase() : '';
    const role = v.role ?? 'viewer';
    if (!EMAIL.test(email) || email.length > 254) errors.push({ line, message: 'email is missing or not an email address' });
    else if (typeof v.password_hash !== 'string' || !isLegacyHash(v.password_hash)) {
      errors.push({ line, message: 'password_hash must be 64 hex characters or sha256$<salt>$<64 hex>' });
    } else if (typeof role !== 'string' || !jwtContract.user_roles.includes(role)) {
      errors.push({ line, message: `role must be one of ${jwtContract.user_roles.join(', ')}` });
    } else if (seen.has(email)) {
      errors.push({ line, message: `email repeats line ${seen.get(email)}` });
    } else {
      seen.set(email, line);
      users.push({ line, user: { email, password_hash: v.password_hash, role: role as UserRole } });
    }
  });
  return { users, errors };
}

export async function importLegacyUsers(text: string, users: UserStore, audit: AuditLog, actor: string): Promise<ImportReport> {
  const parsed = parseLegacyFile(text);
  const report: ImportReport = { imported: 0, skipped_existing: 0, errors: parsed.errors };
  if (parsed.errors.length) return report;
  for (const { user } of parsed.users) {
    const created = await users.create({ email: user.email, role: user.role, passwordHash: user.password_hash, createdBy: actor });
    if (!created) {
      report.skipped_existing++;
      continue;
    }
    report.imported++;
    await audit.record({ type: 'user.created', actor, subject: `user:${created.id}`, detail: { role: created.role, source: 'legacy-import' } });
  }
  return report;
}
