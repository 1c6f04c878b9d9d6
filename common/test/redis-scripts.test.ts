import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createRedis, defineScripts, type Redis } from '../src/index.js';

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

  it('work when first defined in the same tick as other commands on the connection (one auto-pipeline)', async () => {
    // A broker's first CONNECTs under load: tokenState defines the common scripts while
    // registry writes of the same tick already sit in an open auto-pipeline.
    const redis = createRedis(process.env.REDIS_URL!, { name: 'test-scripts-pipeline' });
    try {
      await redis.ping();
      const dir = await scriptDir('bump.lua', "-- keys: 1\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])\n");
      const before = redis.set('script-test:n', '40');
      const scripts = defineScripts<{ bump(key: string, by: number): Promise<number> }>(redis, 'pipelined', dir);
      const [, bumped, after] = await Promise.all([before, scripts.bump('script-test:n', 2), redis.get('script-test:n')]);
      expect(bumped).toBe(42);
      expect(after).toBe('42');
    } finally {
      redis.disconnect();
    }
  });
});
