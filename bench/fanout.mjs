// Fan-out: 1 publisher -> N subscribers on one topic, QoS0, saturating.
//   node bench/fanout.mjs [--transport ws|tcp] [--subs 50] [--duration 8] ...
// Topology (identical on every target, Fleetwire ACL compatible):
//   publisher  = device "dev-pub" publishing devices/dev-pub/telemetry (always WS:
//                Fleetwire only takes devices over WebSocket)
//   subscribers = services "service:bench-svc:<n>" subscribed to that topic,
//                over WS, or over MQTT/TCP with --transport tcp.
import { parseArgs, usage, printTable, log } from './lib/util.mjs';
import { transportFor } from './lib/targets.mjs';
import { runAcross, setupProcess, hardDeadline, printProfiles } from './lib/runner.mjs';
import { connectAll, saturate, jsonPayload, THROUGHPUT_COLUMNS } from './lib/throughput.mjs';
import { MqttConn } from './lib/conn.mjs';

const D = { targets: 'all', transport: 'ws', subs: 50, payloadBytes: 64, window: 400, batch: 20, warmup: 2, duration: 8, profile: false };
const a = parseArgs(D);
if (a.help) { console.log(usage('fanout', '1 publisher -> N subscribers, QoS0, saturating closed loop', D)); process.exit(0); }
setupProcess();
hardDeadline(60 + 3 * (a.warmup + a.duration + 30));

const topic = 'devices/dev-pub/telemetry';
const rows = await runAcross(a, `fanout-${a.transport}`, async (t, ctx) => {
  const subSpecs = [];
  for (let n = 1; n <= a.subs; n++) subSpecs.push({ ...(await t.clientOpts({ kind: 'service', n }, transportFor('service', a.transport))), keepalive: 600 });
  const subs = await connectAll(subSpecs, 25);
  await Promise.all(subs.map((s) => s.subscribe(topic, 0)));
  const pub = new MqttConn({ ...(await t.clientOpts({ kind: 'device', id: 'dev-pub' }, transportFor('device', a.transport))), keepalive: 600 });
  await pub.connect();
  try {
    return await saturate(t, ctx, {
      pubs: [{ conn: pub, topic }], subs, payload: jsonPayload(a.payloadBytes),
      window: a.window, batch: a.batch, warmupMs: a.warmup * 1000, durationMs: a.duration * 1000,
    });
  } finally {
    pub.end(); for (const s of subs) s.end();
  }
});

printTable(`fan-out 1 -> ${a.subs}, QoS0, ${a.payloadBytes} B JSON payload, subscribers over ${a.transport} (publisher WS), ${a.duration}s window`, rows, THROUGHPUT_COLUMNS);
printProfiles(rows);
log('done');
process.exit(0);
