/** The rollouts part of the device service (the engine is rollouts.ts). */
import type { DeviceServiceContext, Part } from './context.js';
import { TICK_MS, type Rollouts } from './rollouts.js';
import { rolloutRoutes } from './routes/rollouts.js';

/** The rollouts part: routes, and the tick that steps the rollouts this node holds. */
export function rolloutsPart(ctx: DeviceServiceContext, rollouts: Rollouts): Part {
  const log = ctx.log.child({ part: 'rollouts' });
  rolloutRoutes(ctx.http, { operator: ctx.guards.operator, reader: ctx.guards.reader, rollouts });
  let timer: NodeJS.Timeout | undefined;
  return {
    start() {
      timer = setInterval(() => void rollouts.tick().catch((err: unknown) => log.warn({ err }, 'rollout tick failed; retrying next tick')), TICK_MS);
      return Promise.resolve();
    },
    async drain() {
      clearInterval(timer);
      await rollouts.stop();
    },
  };
}
