/**
 * Broker metrics. Per-message counters are plain numbers bumped on the hot
 * path and copied into prom-client only when /metrics is scraped.
 */
import { Counter, Gauge, type Registry } from '@fleetwire/common';

export type BrokerMetrics = ReturnType<typeof createBrokerMetrics>;

export function createBrokerMetrics(registry: Registry, localConnections: () => Map<string, number>) {
  const msgIn = new Map<string, number>();
  const bytesIn = new Map<string, number>();
  const msgOut = new Map<string, number>();
  const bytesOut = new Map<string, number>();

  const fromMap = (name: string, help: string, map: Map<string, number>): Counter<'topic_class'> =>
    new Counter({
      name, help, labelNames: ['topic_class'], registers: [registry],
      collect() {
        this.reset();
        for (const [k, v] of map) this.inc({ topic_class: k }, v);
      },
    });

  fromMap('fleetwire_broker_messages_in_total', 'PUBLISH packets accepted from clients', msgIn);
  fromMap('fleetwire_broker_bytes_in_total', 'payload bytes accepted from clients', bytesIn);
  fromMap('fleetwire_broker_messages_out_total', 'PUBLISH packets delivered to clients', msgOut);
  fromMap('fleetwire_broker_bytes_out_total', 'payload bytes delivered to clients', bytesOut);

  new Gauge({
    name: 'fleetwire_broker_connections', help: 'live connections on this node', labelNames: ['kind'], registers: [registry],
    collect() {
      this.reset();
      for (const [kind, n] of localConnections()) this.set({ kind }, n);
    },
  });

  const counter = <L extends string>(name: string, help: string, labelNames: L[]): Counter<L> =>
    new Counter({ name, help, labelNames, registers: [registry] });

  return {
    in(topicClass: string, bytes: number): void {
      msgIn.set(topicClass, (msgIn.get(topicClass) ?? 0) + 1);
      bytesIn.set(topicClass, (bytesIn.get(topicClass) ?? 0) + bytes);
    },
    out(topicClass: string, bytes: number): void {
      msgOut.set(topicClass, (msgOut.get(topicClass) ?? 0) + 1);
      bytesOut.set(topicClass, (bytesOut.get(topicClass) ?? 0) + bytes);
    },
    connects: counter('fleetwire_broker_connects_total', 'authenticated connections', ['kind']),
    disconnects: counter('fleetwire_broker_disconnects_total', 'connections ended, by reason', ['reason']),
    authFailures: counter('fleetwire_broker_auth_failures_total', 'refused authentications, by error code', ['reason']),
    rateLimitDrops: counter('fleetwire_broker_rate_limit_drops_total', 'QoS 0 publishes dropped or connections refused by a limit', ['limit']),
    rateLimitHeld: counter('fleetwire_broker_rate_limit_held_total', 'QoS 1/2 publishes held back by a limit until they fit (backpressure: nothing is lost)', ['limit']),
    kicks: counter('fleetwire_broker_kicks_total', 'connections closed by the broker, by reason', ['reason']),
    queueRoutingErrors: counter('fleetwire_broker_queue_routing_errors_total', 'device messages that could not be queued', ['queue']),
    ingressRejected: counter('fleetwire_broker_ingress_rejected_total', 'device messages refused by their topic schema', ['topic_class']),
    malformed: counter('fleetwire_broker_malformed_input_total', 'connections closed for malformed or oversized input', ['kind']),
    aclDenied: counter('fleetwire_broker_acl_denied_total', 'publishes and subscriptions refused by the ACL', ['action']),
    handshakeRefusals: counter('fleetwire_broker_handshake_refusals_total', 'WebSocket upgrades refused, by error code', ['code']),
  };
}
