// Fan-in: N publishers -> 1 subscriber, QoS0, saturating.
//   node bench/fanin.mjs [--transport ws|tcp] [--pubs 50] [--duration 8] ...
// Topology (identical on every target, Fleetwire ACL compatible):
//   publishers = devices "dev-in-000".."dev-in-049", each publishing its own
//                devices/<id>/telemetry (always WS: Fleetwire takes devices only over WS)
//   subscriber = service "service:bench-svc:1" on devices/+/telemetry, over WS,
//                or MQTT/TCP with --transport tcp.
import { parseArgs, usage, printTable, log } from './lib/util.mjs';
import { transportFor } from './lib/targets.mjs';
import { runAcross, setupProcess, hardDeadline, printProfiles } from './lib/runner.mjs';
import { connectAll, saturate, jsonPayload, THROUGHPUT_COLUMNS } from './lib/throughput.mjs';
import { MqttConn } from './lib/conn.mjs';

const D = { targets: 'all', transport: 'ws', pubs: 50, payloadBytes: 64, window: 2000, batch: 10, warmup: 2, duration: 8, profile: false };
const a = parseArgs(D);
if (a.help) { console.log(usage('fanin', 'N publishers -> 1 subscriber, QoS0, saturating closed loop', D)); process.exit(0); }
setupProcess();
hardDeadline(60 + 3 * (a.warmup + a.duration + 30));

const ids = Array.from({ length: a.pubs }, (_, i) => `dev-in-${String(i).padStart(3, '0')}`);
const rows = await runAcross(a, `fanin-${a.transport}`, async (t, ctx) => {
  await t.registerDevices(ids);
  const sub = new MqttConn({ ...(await t.clientOpts({ kind: 'service', n: 1 }, transportFor('service', a.transport))), keepalive: 600 });
  await sub.connect();
  await sub.subscribe('devices/+/telemetry', 0);
  const pubSpecs = [];
  for (const id of ids) pubSpecs.push({ ...(await t.clientOpts({ kind: 'device', id }, transportFor('device', a.transport))), keepalive: 600 });
  const conns = await connectAll(pubSpecs, 25);
  try {
    return await saturate(t, ctx, {
      pubs: conns.map((conn, i) => ({ conn, topic: `devices/${ids[i]}/telemetry` })), subs: [sub], payload: jsonPayload(a.payloadBytes),
      window: a.window, batch: a.batch, warmupMs: a.warmup * 1000, durationMs: a.duration * 1000,
    });
  } finally {
    sub.end(); for (const c of conns) c.end();
  }
});

printTable(`fan-in ${a.pubs} -> 1, QoS0, ${a.payloadBytes} B JSON payload, subscriber over ${a.transport} (publishers WS), ${a.duration}s window`, rows, THROUGHPUT_COLUMNS);
printProfiles(rows);
log('done');
process.exit(0);
