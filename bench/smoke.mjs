// Correctness check of the harness against each target: connect over WS and
// TCP, subscribe, publish, receive. Run this first when something looks off.
//   node bench/smoke.mjs [--targets all]
import { parseArgs, usage, log, sleep } from './lib/util.mjs';
import { MqttConn, publishPacket, publishParts } from './lib/conn.mjs';
import { telemetryPayload } from './lib/throughput.mjs';
import { startTarget, parseTargets, fleetwireAvailable, transportFor } from './lib/targets.mjs';

const D = { targets: 'all' };
const a = parseArgs(D);
if (a.help) { console.log(usage('smoke', 'harness self-check', D)); process.exit(0); }

let failed = false;
for (const name of parseTargets(a.targets)) {
  if (name === 'fleetwire' && !fleetwireAvailable()) { console.log(`${name}: SKIPPED (not built)`); continue; }
  let t;
  try {
    t = await startTarget(name);
    for (const transport of ['ws', 'tcp']) {
      const got = [];
      const subId = { kind: 'service', n: 1 };
      const sub = new MqttConn({ ...(await t.clientOpts(subId, transportFor('service', transport))), keepalive: 60,
        onPublish: (buf, s, e, b0) => { const p = publishParts(buf, s, e, b0); got.push(buf.toString('utf8', p.topicStart, p.topicEnd) + ' ' + buf.toString('utf8', p.payloadStart, p.payloadEnd)); } });
      await sub.connect();
      await sub.subscribe('devices/+/telemetry');
      const pubId = { kind: 'device', id: 'dev-smoke' };
      const pub = new MqttConn({ ...(await t.clientOpts(pubId, transportFor('device', transport))), keepalive: 60 });
      await pub.connect();
      for (let i = 0; i < 3; i++) pub.write(publishPacket('devices/dev-smoke/telemetry', telemetryPayload({ seq: i, temp: 21.5 })));
      await sleep(500);
      await pub.ping();
      const ok = got.length === 3;
      if (!ok) failed = true;
      console.log(`${name} ${transport} (sub ${sub.transport}, pub ${pub.transport}, proto ${sub.selectedProtocol ?? '-'}): ${ok ? 'OK' : 'FAIL'} received ${got.length}/3 ${got[0] ?? ''}`);
      pub.end(); sub.end();
      await sleep(200);
    }
  } catch (err) {
    failed = true;
    console.log(`${name}: FAIL ${err.message}`);
    if (t) console.log(t.stderrTail());
  } finally {
    if (t) await t.stop();
  }
}
log('done');
process.exit(failed ? 1 : 0);
