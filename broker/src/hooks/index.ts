/**
 * The broker's Aedes hooks, one file each, as Aedes keeps lib/handlers/:
 * pre-connect (keepalive bounds), authenticate (JWT, revocation, client id), publish
 * (topic ACL, then the ingress policy), subscribe (topic ACL) and forward (metrics).
 */
import type { Aedes } from 'aedes';
import type { Logger, Redis, TokenVerifier } from '@fleetwire/common';
import type { ConnectGate } from '../connect-gate.js';
import type { Connections } from '../connections.js';
import { IngressPolicy, type IngressRouter } from '../ingress.js';
import type { BrokerMetrics } from '../metrics.js';
import { authenticateHook } from './authenticate.js';
import { forwardHook } from './forward.js';
import { preConnectHook } from './pre-connect.js';
import { publishHook } from './publish.js';
import { subscribeHook } from './subscribe.js';

export interface HookDeps {
  aedes: Aedes;
  redis: Redis;
  verifier: TokenVerifier;
  gate: ConnectGate;
  connections: Connections;
  ingress: IngressRouter;
  metrics: BrokerMetrics;
  log: Logger;
  nodeId: string;
  limits: { keepaliveMinS: number; keepaliveMaxS: number; limitServices: boolean };
}

export function installHooks(d: HookDeps): void {
  const ingress = new IngressPolicy({ router: d.ingress, metrics: d.metrics, log: d.log, nodeId: d.nodeId });
  d.aedes.preConnect = preConnectHook(d);
  d.aedes.authenticate = authenticateHook(d);
  d.aedes.authorizePublish = publishHook({ ...d, ingress });
  d.aedes.authorizeSubscribe = subscribeHook(d);
  d.aedes.authorizeForward = forwardHook(d);
}
