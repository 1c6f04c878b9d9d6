/**
 * The ingress policy: what becomes of a device's publish once the topic ACL allowed it.
 * Every rule about that is here:
 * - Which queue: a device's message goes to the queue its topic class names in
 *   contracts/topics.json (one of contracts/queues.json). A class without one
 *   and whatever a user or service publishes only reach subscribers.
 *   On a queue with `batch` (heartbeats, telemetry) messages travel in jobs of many
 *   (ingress-batcher.ts).
 * - Refusal: a payload that does not decode, fails its schema or cannot be a JSON job
 *   (ingress-payload.ts) is acknowledged, so the device does not retransmit it forever,
 *   but reaches nobody, with a metric and a log line.
 * - ML admission (common/src/ml.ts): an ml/infer request is checked against the device's
 *   quota and gets its deadline and request record before it is queued; over quota it is
 *   answered rate_limited, and a retransmission of one already answered is dropped.
 * - The ML error reply: a refused ml/infer request with a cid gets an error result on
 *   the device's ml/result, which it can correlate.
 * - Acknowledgement: QoS 0 passes at once; a failed enqueue is counted and logged.
 *   QoS 1 gets its PUBACK only once the queue holds the job (at-least-once); when the
 *   queue cannot take it the connection closes (queue-unavailable) without a PUBACK,
 *   and the device sends it again after reconnecting. A retransmission with the same
 *   cid maps to the same job id and is not queued twice.
 */
import { Queue, type JobsOptions } from 'bullmq';
import type { Client, PublishPacket } from 'aedes';
import { randomUUID } from 'node:crypto';
import {
  admitMlRequest, deviceJobId, mlDeadline, mlErrorResult, queues as queueContract, topicFor,
  type IngressEnvelope, type Logger, type MlAdmission, type MlAdmissionSettings, type MlErrorCode, type QueueSpec, type Redis, type TopicEntry,
} from '@fleetwire/common';
import { IngressBatcher } from './ingress-batcher.js';
import { setCloseIntent, type ConnState } from './conn-state.js';
import { decodeDevicePayload, IngressRejected } from './ingress-payload.js';
import type { BrokerMetrics } from './metrics.js';

export interface IngressPolicyDeps {
  router: IngressRouter;
  metrics: BrokerMetrics;
  log: Logger;
  nodeId: string;
}

export class IngressPolicy {
  /** Where refused-but-acknowledged messages go: no client may subscribe to $-topics, so nobody receives them. */
  private readonly sinkTopic: string;

  constructor(private readonly d: IngressPolicyDeps) {
    this.sinkTopic = `$SYS/${d.nodeId}/fleetwire/dropped`;
  }

  /**
   * Decides the fate of a publish the ACL allowed (`entry` is its topic class, `deviceId`
   * the device in its topic) and answers Aedes' authorizePublish through `done`.
   */
  accept(client: Client, state: ConnState, packet: PublishPacket, entry: TopicEntry, deviceId: string, done: (err?: Error | null) => void): void {
    const queue = state.claims?.typ === 'device' ? entry.queue : undefined;
    if (!queue || !deviceId) return done(null);

    let payload: Record<string, unknown>;
    try {
      payload = decodeDevicePayload(entry.class, packet.payload as Buffer);
    } catch (err) {
      if (!(err instanceof IngressRejected)) throw err;
      this.refuse(client, packet, entry.class, err);
      return done(null);
    }
    const routed = entry.class === 'ml-infer'
      ? this.routeMlRequest(client, queue, deviceId, payload)
      : this.d.router.route(queue, deviceId, entry.class, payload);
    if (packet.qos === 0) {
      routed.catch((err: unknown) => this.routingFailed(err, queue, client.id));
      return done(null);
    }
    // QoS 1: PUBACK only once the queue has the job, so the device retransmits if Redis lost it.
    routed.then(
      () => done(null),
      (err: unknown) => {
        this.routingFailed(err, queue, client.id);
        state.closeReason = 'queue-unavailable';
        setCloseIntent(state, 'queue-unavailable');
        done(new Error('queue unavailable'));
      },
    );
  }

  /** Admits an ML request (quota, deadline) before queueing it; over quota it is answered at once. */
  private async routeMlRequest(client: Client, queue: string, deviceId: string, payload: Record<string, unknown>): Promise<void> {
    const admission = await this.d.router.admitMl(deviceId, payload);
    if (admission.verdict === 'rate_limited') {
      this.d.metrics.ingressRejected.inc({ topic_class: 'ml-infer' });
      this.d.log.debug({ cid: payload.cid, device_id: deviceId }, 'ml request over the device\'s quota: answered rate_limited');
      this.answerMl(client, String(payload.cid), 'rate_limited');
      return;
    }
    if (admission.verdict === 'answered') return; // a retransmission of a request already answered: exactly one answer per cid
    await this.d.router.route(queue, deviceId, 'ml-infer', payload, { received_at: admission.receivedAt, deadline_at: admission.deadlineAt });
    this.d.log.debug({ cid: payload.cid, device_id: deviceId, model: payload.model, deadline_at: admission.deadlineAt, retransmitted: admission.verdict === 'retransmitted' }, 'ml request enqueued');
  }

  private answerMl(client: Client, cid: string, code: MlErrorCode, message?: string): void {
    const result = mlErrorResult(cid, code, message);
    client.publish({ cmd: 'publish', topic: topicFor('ml-result', client.id), payload: Buffer.from(JSON.stringify(result)), qos: 1, retain: false, dup: false }, () => {});
  }

  private routingFailed(err: unknown, queue: string, clientId: string): void {
    this.d.metrics.queueRoutingErrors.inc({ queue });
    this.d.log.error({ err, queue, client_id: clientId }, 'routing a device message to its queue failed');
  }

  /** Sends the acknowledged message nowhere; an ML request also gets its error result. */
  private refuse(client: Client, packet: PublishPacket, topicClass: string, err: IngressRejected): void {
    this.d.metrics.ingressRejected.inc({ topic_class: topicClass });
    this.d.log.warn({ client_id: client.id, cid: err.cid, topic: packet.topic }, err.message);
    packet.topic = this.sinkTopic;
    packet.retain = false;
    if (topicClass === 'ml-infer' && err.cid) this.answerMl(client, err.cid, 'request_invalid', err.message);
  }
}

/** The BullMQ queues of contracts/queues.json, holding device messages as ingress envelopes. */
export class IngressRouter {
  private readonly queues = new Map<string, Queue>();
  /** Queues whose jobs carry batches of envelopes (contracts/queues.json `batch`). */
  private readonly batchers = new Map<string, IngressBatcher>();

  constructor(private readonly connection: Redis, private readonly nodeId: string, private readonly ml: MlAdmissionSettings) {
    for (const [name, spec] of Object.entries(queueContract.queues)) {
      const queue = new Queue(name, { connection, prefix: queueContract.prefix });
      this.queues.set(name, queue);
      if (spec.batch) this.batchers.set(name, new IngressBatcher(queue, spec.batch, jobOptions(spec)));
    }
  }

  queue(name: string): Queue {
    const q = this.queues.get(name);
    if (!q) throw new Error(`unknown queue ${name}: add it to common/contracts/queues.json`);
    return q;
  }

  /** Quota and deadline of a schema-valid ML request (which has a cid), recorded for the bridge. */
  async admitMl(deviceId: string, payload: Record<string, unknown>): Promise<{ verdict: MlAdmission; receivedAt: number; deadlineAt: number }> {
    const receivedAt = Date.now();
    const deadlineAt = mlDeadline(this.ml, receivedAt, payload.deadline_ms);
    const cid = String(payload.cid);
    const verdict = await admitMlRequest(this.connection, this.ml, {
      deviceId, cid, model: String(payload.model), receivedAt, deadlineAt, jobId: deviceJobId(deviceId, cid),
    });
    return { verdict, receivedAt, deadlineAt };
  }

  /** Enqueues a decoded device message; resolves when Redis has it. */
  async route(queueName: string, deviceId: string, topicClass: string, payload: Record<string, unknown>,
    stamps: { received_at?: number; deadline_at?: number } = {}): Promise<string> {
    const spec = queueContract.queues[queueName]!;
    const cid = typeof payload.cid === 'string' ? payload.cid : randomUUID();
    const envelope: IngressEnvelope = {
      cid, device_id: deviceId, topic_class: topicClass, payload, received_at: stamps.received_at ?? Date.now(), node: this.nodeId,
      ...(stamps.deadline_at === undefined ? {} : { deadline_at: stamps.deadline_at }),
    };
    const batcher = this.batchers.get(queueName);
    if (batcher) {
      await batcher.add(envelope);
      return cid;
    }
    await this.queue(queueName).add(topicClass, envelope, {
      // Stable id for messages with a device-chosen cid, so a QoS 1 retransmission is not queued twice.
      ...(typeof payload.cid === 'string' ? { jobId: deviceJobId(deviceId, cid) } : {}),
      ...jobOptions(spec),
    });
    return cid;
  }

  /** Sends the batches still gathering, then closes the queues. */
  async close(): Promise<void> {
    await Promise.all([...this.batchers.values()].map((b) => b.close()));
    await Promise.all([...this.queues.values()].map((q) => q.close()));
  }
}

/** Retries and retention of a queue's jobs, from the contract. */
function jobOptions(spec: QueueSpec): JobsOptions {
  return {
    attempts: spec.attempts,
    backoff: { type: 'exponential', delay: spec.backoff_ms },
    removeOnComplete: spec.remove_on_complete,
    removeOnFail: spec.remove_on_fail,
  };
}
