/**
 * The bridge's Prometheus metrics (prefix fleetwire_ml_). Requests are counted once, when
 * they are answered, by model and outcome (`ok` or the error code), so the counts add up
 * to the answers devices got. Restarts of supervised workers are the supervisor's
 * fleetwire_supervised_restarts_total{process="ml-worker-<i>"}.
 */
import { Counter, Gauge, Histogram, type Registry } from '@fleetwire/common';

export interface MlMetrics {
  readonly requests: Counter<'model' | 'outcome'>;
  readonly latency: Histogram<'model'>;
  readonly compute: Histogram<'model'>;
  readonly timeouts: Counter;
  readonly lateResults: Counter;
  readonly queueDepth: Gauge<'state'>;
  readonly workersAlive: Gauge;
}

// The round trip is a few milliseconds at best and a deadline (seconds) at worst: fine buckets at the bottom.
const LATENCY_BUCKETS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2, 5];
const COMPUTE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5];

export function mlMetrics(registry: Registry, collect: { queueDepth: () => Promise<Record<string, number>>; workersAlive: () => Promise<number> }): MlMetrics {
  return {
    requests: new Counter({
      name: 'fleetwire_ml_requests_total', help: 'ML requests answered by the bridge, by model and outcome (ok, or the error code: timeout, model_unknown …)',
      labelNames: ['model', 'outcome'], registers: [registry],
    }),
    latency: new Histogram({
      name: 'fleetwire_ml_latency_seconds', help: 'from the broker receiving a request to the bridge publishing its answer',
      labelNames: ['model'], buckets: LATENCY_BUCKETS, registers: [registry],
    }),
    compute: new Histogram({
      name: 'fleetwire_ml_compute_seconds', help: 'time in onnxruntime for the micro-batch a request was in (the worker\'s compute_ms)',
      labelNames: ['model'], buckets: COMPUTE_BUCKETS, registers: [registry],
    }),
    timeouts: new Counter({ name: 'fleetwire_ml_timeouts_total', help: 'requests answered timeout (their deadline passed first)', registers: [registry] }),
    lateResults: new Counter({
      name: 'fleetwire_ml_late_results_total', help: 'worker results dropped because the request had been answered timeout (or its record was gone) when they came',
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'fleetwire_ml_queue_depth', help: 'ml-infer jobs by state, read at scrape time', labelNames: ['state'], registers: [registry],
      async collect() {
        const counts = await collect.queueDepth();
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    }),
    workersAlive: new Gauge({
      name: 'fleetwire_ml_workers_alive', help: 'workers (supervised or standalone) whose heartbeat is fresh, read at scrape time', registers: [registry],
      async collect() {
        this.set(await collect.workersAlive());
      },
    }),
  };
}
