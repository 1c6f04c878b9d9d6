/** What the device service's parts share, and the shape of a part. */
import type { FastifyInstance } from 'fastify';
import type { Guard, Logger, Redis, Registry } from '@fleetwire/common';
import type { BrokerLink } from '@fleetwire/common';
import type { DeviceServiceConfig } from './config.js';

export interface DeviceServiceContext {
  readonly config: DeviceServiceConfig;
  readonly log: Logger;
  readonly metricsRegistry: Registry;
  /** Plain commands (shared with the other services of the process). */
  readonly redis: Redis;
  /** For BullMQ workers and blocking reads: `maxRetriesPerRequest: null`, owned by the device service. */
  readonly queueConnection: Redis;
  /** For SUBSCRIBE (a subscriber connection can do nothing else), owned by the device service. */
  readonly subscriber: Redis;
  readonly http: FastifyInstance;
  /** Connected once the service has started (start(port) below). */
  readonly link: BrokerLink;
  /** Reads: any user and services. Writes and commands: admins and operators (and services). Firmware uploads: admins. */
  readonly guards: { readonly reader: Guard; readonly operator: Guard; /** Admins only (no services): firmware uploads. */ readonly admin: Guard };
}

/** One capability of the device service (heartbeats, silence, telemetry, commands …), started and stopped with it. */
export interface Part {
  readonly readiness?: Record<string, () => Promise<boolean>>;
  /** After the broker link is up. */
  start?(): Promise<void>;
  /** Stop taking work, finish what runs. */
  drain?(): Promise<void>;
  close?(): Promise<void>;
}
