/**
 * Redis Lua scripts kept as files: each package has its own in `src/lua/<name>.lua`,
 * whose first line states how many of the script's arguments are keys:
 *
 *   -- keys: 2           KEYS[1] and KEYS[2]; the other arguments are ARGV
 *   -- keys: variable    the caller passes the key count as its first argument
 *
 * defineScripts registers a package's scripts on a connection as ioredis commands named
 * `<service>_<name>`. ioredis keeps one command per name and connection, so without the
 * prefix two packages with a `gate.lua` sharing a connection (`fleetwire up`) would both
 * run whichever was defined last.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';

/** A script as its callers see it: keys first, then ARGV, as ioredis commands take them. */
export type RedisScript = (...args: Array<string | number | Buffer>) => Promise<unknown>;

interface ScriptFile {
  /** camelCase of the file name: `auth-failure.lua` is `authFailure`. */
  name: string;
  /** undefined when the caller passes the key count. */
  numberOfKeys: number | undefined;
  lua: string;
}

const HEADER = /^-- keys: (\d+|variable)\r?\n/;

const filesByDir = new Map<string, readonly ScriptFile[]>();
const definedOn = new WeakMap<Redis, Map<string, { dir: string; scripts: Record<string, RedisScript> }>>();

/**
 * The scripts in `dir`, defined on `redis` for `service`, callable by name: declare their
 * signatures as `T`, e.g. `defineScripts<{ gate(ban: string, …): Promise<[number, number]> }>`.
 * Defines them once per connection and service; later calls return the same object cheaply.
 */
export function defineScripts<T extends object>(redis: Redis, service: string, dir: URL): T {
  let services = definedOn.get(redis);
  if (!services) definedOn.set(redis, (services = new Map()));
  const known = services.get(service);
  if (known) {
    if (known.dir !== dir.href) throw new Error(`scripts of ${service} are already defined from ${known.dir}, not ${dir.href}`);
    return known.scripts as T;
  }
  if (!/^[a-z][a-z0-9]*$/.test(service)) throw new Error(`script service name "${service}" must be lower-case letters and digits`);
  const scripts: Record<string, RedisScript> = {};
  for (const file of readScriptDir(fileURLToPath(dir))) {
    const command = `${service}_${file.name}`;
    redis.defineCommand(command, file.numberOfKeys === undefined ? { lua: file.lua } : { lua: file.lua, numberOfKeys: file.numberOfKeys });
    addToOpenAutoPipelines(redis, command);
    scripts[file.name] = (redis as unknown as Record<string, RedisScript>)[command]!.bind(redis);
  }
  services.set(service, { dir: dir.href, scripts });
  return scripts as T;
}

/** The ioredis (5.x) internals addToOpenAutoPipelines mirrors from its Pipeline constructor. */
interface AutoPipelined {
  _autoPipelines?: Map<string, Record<string, unknown> & { _shaToScript: Record<string, unknown> }>;
  scriptsSet: Record<string, { sha: string }>;
}

/**
 * Scripts are defined on first use (tokenState's at a broker's first CONNECT), and ioredis
 * copies a connection's commands into an auto-pipeline (one per tick) when it opens it. A
 * command defined while a pipeline is open was missing from it: calling it in that tick
 * threw inside ioredis, which then failed every reply of the pipeline and took the process
 * down (a broker under a connect storm, bench/heartbeats.mjs). The open pipelines get the
 * new command as the Pipeline constructor would have given it.
 */
function addToOpenAutoPipelines(redis: Redis, command: string): void {
  const client = redis as unknown as AutoPipelined & Record<string, unknown>;
  const script = client.scriptsSet?.[command];
  for (const pipeline of client._autoPipelines?.values() ?? []) {
    pipeline[command] = client[command];
    pipeline[`${command}Buffer`] = client[`${command}Buffer`];
    if (script) pipeline._shaToScript[script.sha] = script;
  }
}

function readScriptDir(path: string): readonly ScriptFile[] {
  let files = filesByDir.get(path);
  if (files) return files;
  let names: string[];
  try {
    names = readdirSync(path).filter((n) => n.endsWith('.lua')).sort();
  } catch (err) {
    throw new Error(`Redis scripts folder ${path} cannot be read: the package's src/lua/ must ship beside dist/`, { cause: err });
  }
  files = names.map((n) => readScript(path, n));
  filesByDir.set(path, files);
  return files;
}

function readScript(dir: string, fileName: string): ScriptFile {
  const file = join(dir, fileName);
  const lua = readFileSync(file, 'utf8');
  const header = HEADER.exec(lua);
  if (!header) throw new Error(`${file} must start with "-- keys: <count>" or "-- keys: variable"`);
  const numberOfKeys = header[1] === 'variable' ? undefined : Number(header[1]);
  if (numberOfKeys !== undefined) {
    // A wrong count shifts keys into ARGV (or the reverse) and fails only when the script runs.
    const used = Math.max(0, ...[...lua.matchAll(/KEYS\[(\d+)\]/g)].map((m) => Number(m[1])));
    if (used !== numberOfKeys) throw new Error(`${file} declares ${numberOfKeys} keys but uses KEYS[1..${used}]`);
  }
  const name = fileName.slice(0, -'.lua'.length).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  return { name, numberOfKeys, lua };
}
