/**
 * Gathers the jobs a BullMQ Worker hands over in one event-loop turn into one
 * call of a batch handler.
 *
 * Why this shape: BullMQ (open source) has no batch API. The alternative,
 * fetching with `worker.getNextJob()` by hand, leaves everything a Worker does
 * per job to us: renewing each job's lock before `lockDuration` runs out,
 * running the stalled-job checker, moving jobs to completed/failed with their
 * tokens (and so retries and backoff), waiting on the blocking marker, and a
 * graceful close. Getting any of that wrong loses or duplicates jobs. Here the
 * Worker keeps doing all of it: each job still sits in its own processor call,
 * holding a concurrency slot, its lock renewed and its outcome recorded by
 * BullMQ. A batch is only a meeting point of processor calls, so a batch never
 * holds more jobs than `concurrency`.
 *
 * No added latency at low load: a job waits for company only until the end of
 * the current event-loop turn (setImmediate), not for a timer. When the Worker
 * has jobs ready it fetches them back to back and calls the processor for each
 * in the same turn, so they meet; a lone job runs alone at once. When every
 * slot is waiting in the pending batch nothing more can join, so it runs
 * without waiting for the turn to end.
 */

/** Per-item failures a batch handler may return; items not in the map succeeded. */
export type BatchFailures<T> = ReadonlyMap<T, Error>;

export type BatchHandler<T> = (items: readonly T[]) => Promise<void | BatchFailures<T>>;

interface Waiting<T> {
  readonly item: T;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Returns a function to call once per item (from a processor); it resolves or
 * rejects when the batch holding the item has been handled: a thrown error
 * fails every item of the batch, a returned map fails only the items in it.
 */
export function collectBatches<T>(
  handleBatch: BatchHandler<T>,
  slots: number,
  onBatch: (size: number) => void = () => undefined,
): (item: T) => Promise<void> {
  let pending: Waiting<T>[] = [];
  let scheduled: NodeJS.Immediate | null = null;
  /** Items in batches being handled: they hold slots, so fewer can join the pending batch. */
  let inFlight = 0;

  const flush = (): void => {
    if (scheduled) clearImmediate(scheduled);
    scheduled = null;
    const batch = pending;
    pending = [];
    if (batch.length > 0) void run(batch);
  };

  const run = async (batch: Waiting<T>[]): Promise<void> => {
    inFlight += batch.length;
    onBatch(batch.length);
    try {
      const failures = await handleBatch(batch.map((w) => w.item));
      for (const w of batch) {
        const err = failures?.get(w.item);
        if (err) w.reject(err);
        else w.resolve();
      }
    } catch (err) {
      for (const w of batch) w.reject(err);
    } finally {
      inFlight -= batch.length;
    }
  };

  return (item) => new Promise<void>((resolve, reject) => {
    pending.push({ item, resolve, reject });
    if (pending.length + inFlight >= slots) flush();
    else scheduled ??= setImmediate(flush);
  });
}
