/**
 * The services this checkout holds, found from the root package.json: every workspace
 * whose package.json has `"fleetwire": {"service": "<module>"}` is a service, and the
 * module exports it as `service`. Adding a service is its folder plus its line in
 * `workspaces`; the CLI, `up`, `spec`, /readyz and the usage text follow.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { AnyService } from '@fleetwire/common';

interface PackageJson { name?: string; workspaces?: string[]; fleetwire?: { service?: string } }

const readJson = (file: string): PackageJson => JSON.parse(readFileSync(file, 'utf8')) as PackageJson;

/** In `workspaces` order, which is the order `fleetwire up` builds and drains them in. */
export async function discoverServices(root: string): Promise<AnyService[]> {
  const services: AnyService[] = [];
  for (const dir of readJson(join(root, 'package.json')).workspaces ?? []) {
    const manifest = join(root, dir, 'package.json');
    if (!existsSync(manifest)) throw new Error(`workspace ${dir} in package.json has no ${dir}/package.json`);
    const entry = readJson(manifest).fleetwire?.service;
    if (!entry) continue;
    const file = join(root, dir, entry);
    if (!existsSync(file)) throw new Error(`${dir}: its service module ${entry} is missing; run make build`);
    const { service } = await import(pathToFileURL(file).href) as { service?: AnyService };
    if (!service || typeof service.build !== 'function' || typeof service.name !== 'string') {
      throw new Error(`${dir}/${entry} does not export a service definition named "service"`);
    }
    services.push(service);
  }
  return services;
}

const column = (left: string, right: string): string => `  ${left.padEnd(34)}${right}`;

/** The usage text, composed from the services and the commands they add. */
export function usage(version: string, services: readonly AnyService[]): string {
  const indent = (text: string): string => text.split('\n').map((l) => `  ${l}`).join('\n');
  return [
    `fleetwire ${version}`,
    '',
    'Usage:',
    column('fleetwire up', `run every service in one process on one port (PORT, default 8080): ${services.map((s) => s.name).join(', ')}`),
    ...services.map((s) => column(`fleetwire ${s.name}`, `this service alone: ${s.summary}`)),
    '',
    ...services.flatMap((s) => (s.commands ?? []).map((c) => indent(c.usage))),
    '',
    column('fleetwire token device <id>', 'mint a device token with the local key (development only);'),
    column('', 'registers the device as active if it is not known yet'),
    '  fleetwire token user <id> --role admin|operator|viewer',
    '  fleetwire token service <name>',
    column('    --ttl <seconds>', 'token lifetime (default 3600)'),
    column('fleetwire spec', 'version, commit, features, parameters and limits as JSON (never secrets)'),
    '',
    'Configuration comes from the environment; see README.md.',
  ].join('\n');
}
