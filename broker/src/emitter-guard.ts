/**
 * Keeps Aedes' message emitter (mqemitter, or mqemitter-redis in cluster mode) from
 * overflowing the stack.
 *
 * When more than `concurrency` messages are in flight, mqemitter queues the rest, and each
 * message that finishes starts the next queued one from inside its own callback. A message
 * whose deliveries all finish at once (no subscriber, QoS 0) therefore starts the next one
 * a few frames deeper, and a long queue becomes a recursion as deep as the queue. A mass
 * disconnect does that: thousands of devices dropping at once put their presence messages
 * and Aedes' $SYS notices in the queue behind slower QoS 1 deliveries, and the broker died
 * with "Maximum call stack size exceeded" in qlobber (bench/heartbeats.mjs tearing down
 * 10,000 connections; the architecture notes saw the same from a QoS 0 flood).
 *
 * The guard counts how deep such a chain has gone and, past MAX_DEPTH, puts the message
 * back at the head of the queue and lets mqemitter release the slot on a fresh stack
 * (setImmediate). Order holds: the message keeps its place (another finishing message may
 * start it first), and the slot stays taken meanwhile, so a new message still queues behind.
 */
const MAX_DEPTH = 100;

/**
 * The part of mqemitter the guard touches (mqemitter 7): `_do` starts a message, `current`
 * counts those in flight, `_released` frees a slot and starts the head of the queue.
 */
interface Emitter {
  current: number;
  _messageQueue: unknown[];
  _messageCallbacks: unknown[];
  _do(message: unknown, callback: unknown): unknown;
  _released(): void;
}

export function guardEmitterRecursion(mq: object): void {
  const emitter = mq as Emitter;
  const start = emitter._do.bind(emitter);
  let depth = 0;
  emitter._do = (message, callback) => {
    if (depth >= MAX_DEPTH) {
      emitter._messageQueue.unshift(message);
      emitter._messageCallbacks.unshift(callback);
      emitter.current++;
      setImmediate(() => emitter._released());
      return emitter;
    }
    depth++;
    try {
      return start(message, callback);
    } finally {
      depth--;
    }
  };
}
