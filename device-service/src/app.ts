/** Builds the device service on the shared parts: one part per capability, the broker link they publish through. */
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AuditLog, BrokerLink, configInvalid, createRedis, requireRole, type ServiceDeps } from '@fleetwire/common';
import { devSigningKey } from './firmware/dev-signing.js';
import type { DeviceServiceConfig } from './config.js';
import type { DeviceServiceContext, Part } from './context.js';
import { alertsPart } from './alerts.js';
import { commandsPart } from './commands.js';
import { firmwarePart } from './firmware/part.js';
import { diskFirmwareStore } from './firmware/storage.js';
import { fleetHealthPart } from './fleet-health.js';
import { heartbeatsPart } from './heartbeats.js';
import { otaEventsPart } from './ota-events.js';
import { presencePart } from './presence.js';
import { Rollouts } from './rollouts.js';
import { rolloutsPart } from './rollouts-part.js';
import { silencePart } from './silence.js';
import { telemetryPart } from './telemetry.js';

export interface DeviceService {
  readonly readiness: Record<string, () => Promise<boolean>>;
  start(port: number): Promise<string[]>;
  drain(): Promise<void>;
  close(): Promise<void>;
}

export async function buildDeviceService(config: DeviceServiceConfig, deps: ServiceDeps): Promise<DeviceService> {
  // Its own /mqtt is there only when the broker runs in this process.
  if (!config.brokerUrl && !deps.services.includes('broker')) {
    throw configInvalid(['DEVICE_BROKER_URL must name a broker node (ws(s)://host:port/mqtt) when the broker does not run in this process (`fleetwire device-service` alone)']);
  }
  const keys = await deps.keyRing();
  const node = `${hostname()}-${randomBytes(3).toString('hex')}`;
  const ownBroker = !config.brokerUrl;
  let brokerUrl = config.brokerUrl;
  const link = new BrokerLink({
    url: () => brokerUrl, signer: () => keys.signer, clientId: `service:device-service:${node}`, log: deps.log.child({ part: 'broker-link' }),
    allowSelfSigned: ownBroker,
  });
  const ctx: DeviceServiceContext = {
    config, log: deps.log, metricsRegistry: deps.metricsRegistry, redis: deps.redis, http: deps.http, link,
    queueConnection: createRedis(config.redisUrl, { name: `device-service-queues:${node}`, maxRetriesPerRequest: null }),
    subscriber: createRedis(config.redisUrl, { name: `device-service-sub:${node}`, maxRetriesPerRequest: null }),
    guards: {
      reader: requireRole(keys.verifier, deps.redis, ['admin', 'operator', 'viewer']),
      operator: requireRole(keys.verifier, deps.redis, ['admin', 'operator']),
      admin: requireRole(keys.verifier, deps.redis, ['admin'], { services: false }),
    },
  };
  const parts: Part[] = [];
  const store = diskFirmwareStore(join(resolve(config.dataDir), 'firmware'));
  const rollouts = new Rollouts({
    redis: deps.redis, link, store, log: deps.log.child({ part: 'rollouts' }), node,
    audit: new AuditLog(deps.redis, deps.log, config.auditMaxRecords), registry: deps.metricsRegistry,
  });
  // The alert sink gets the silence checker's raised changes and the heartbeat part's cleared ones,
  // so it is made first and closed last, after both have stopped.
  const alerts = alertsPart(ctx);
  parts.push(alerts, heartbeatsPart(ctx, { alerts }), silencePart(ctx, { alerts }), presencePart(ctx), otaEventsPart(ctx, { rollouts }));
  parts.push(telemetryPart(ctx), fleetHealthPart(ctx));
  parts.push(commandsPart(ctx, node));
  const devKey = config.otaDevSigning ? await devSigningKey(resolve(config.dataDir)) : undefined;
  parts.push(firmwarePart(ctx, { verifier: keys.verifier, store, devKey }), rolloutsPart(ctx, rollouts));

  return {
    readiness: {
      broker_link: async () => link.connected,
      ...Object.assign({}, ...parts.map((p) => p.readiness ?? {})),
    },
    async start(port) {
      // With the broker in this process, its /mqtt is on the shared port.
      if (ownBroker) brokerUrl = `${config.tlsCertFile ? 'wss' : 'ws'}://127.0.0.1:${port}/mqtt`;
      await link.start();
      for (const p of parts) await p.start?.();
      return [`Device service: node ${node}, publishing through ${brokerUrl}`];
    },
    async drain() {
      for (const p of parts) await p.drain?.();
    },
    async close() {
      for (const p of [...parts].reverse()) await p.close?.();
      await link.close();
      ctx.queueConnection.disconnect();
      ctx.subscriber.disconnect();
    },
  };
}
