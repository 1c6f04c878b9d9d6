/**
 * Aedes' emitter under a long queue: when the messages in flight reach its concurrency and
 * thousands more wait behind them (a mass disconnect's presence and $SYS messages behind
 * QoS 1 deliveries), the waiting ones must still all be delivered, in order, without the
 * recursion that overflowed the broker's stack.
 */
import { describe, expect, it } from 'vitest';
import mqemitter from 'mqemitter';
import { guardEmitterRecursion } from '../src/emitter-guard.js';

type Done = () => void;

/** Two slow messages fill the emitter; 20,000 quick ones queue behind them; then the slow ones finish. */
async function floodBehindSlowOnes(guard: boolean): Promise<{ delivered: number[]; error?: unknown }> {
  const mq = mqemitter({ concurrency: 2 });
  if (guard) guardEmitterRecursion(mq);
  const slow: Done[] = [];
  const delivered: number[] = [];
  mq.on('slow', (_m: unknown, done: Done) => { slow.push(done); });
  mq.on('quick', (m, done: Done) => { delivered.push((m as unknown as { n: number }).n); done(); });
  mq.emit({ topic: 'slow' });
  mq.emit({ topic: 'slow' });
  for (let n = 0; n < 20_000; n++) mq.emit({ topic: 'quick', n });
  expect((mq as unknown as { length: number }).length).toBe(20_000); // queued: mqemitter's `length`, not in its types
  try {
    for (const done of slow) done();
  } catch (error) {
    return { delivered, error };
  }
  // mqemitter shifts its queue one message at a time (an array shift each): 20,000 take a while.
  const deadline = Date.now() + 10_000;
  while (delivered.length < 20_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return { delivered };
}

describe('the emitter guard', () => {
  it('without it, a long queue behind slow messages overflows the stack (the broker crash it prevents)', async () => {
    const { error } = await floodBehindSlowOnes(false);
    expect(error).toBeInstanceOf(RangeError);
  });

  it('with it, every queued message is delivered, in order', async () => {
    const { delivered, error } = await floodBehindSlowOnes(true);
    expect(error).toBeUndefined();
    expect(delivered).toHaveLength(20_000);
    expect(delivered.every((n, i) => n === i)).toBe(true);
  });
});
