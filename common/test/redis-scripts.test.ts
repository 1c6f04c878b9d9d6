import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { defineScripts, type Redis } from '../src/index.js';

/** A folder holding one script file; defineScripts reads the files before it touches the connection. */
async function scriptDir(fileName: string, lua: string): Promise<URL> {
  const dir = await mkdtemp(join(tmpdir(), 'fw-lua-'));
  await writeFile(join(dir, fileName), lua);
  return pathToFileURL(`${dir}/`);
}

const connection = (): Redis => ({ defineCommand: () => undefined }) as unknown as Redis;

describe('Redis script files', () => {
  it('refuse to load without a key count, naming the file, instead of running with a guessed one', async () => {
    const dir = await scriptDir('touch.lua', "return redis.call('INCR', KEYS[1])\n");
    expect(() => defineScripts(connection(), 'test', dir)).toThrow(/touch\.lua must start with "-- keys: <count>"/);
  });

  it('refuse a key count that disagrees with the KEYS the script uses, before any call could shift keys into ARGV', async () => {
    const dir = await scriptDir('move.lua', "-- keys: 1\nreturn redis.call('RENAME', KEYS[1], KEYS[2])\n");
    expect(() => defineScripts(connection(), 'test', dir)).toThrow('move.lua declares 1 keys but uses KEYS[1..2]');
  });
});
