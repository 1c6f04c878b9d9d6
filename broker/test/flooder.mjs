// A device that floods QoS 0 publishes, in a process of its own as a real flooder would be:
// its own sending then costs the broker's process nothing, so a test can tell what the
// flood costs the broker. Sends as fast as its socket takes bytes, up to 40,000 publishes a
// second. Prints "ready" once connected; on SIGTERM prints how many publishes it sent, exits.
//   node flooder.mjs <ws url> <token> <client id>
import WebSocket from 'ws';
import mqttPacket from 'mqtt-packet';

const [url, token, clientId] = process.argv.slice(2);
const ws = new WebSocket(url, ['mqtt', `auth.${token}`]);
ws.on('error', (err) => { console.error(err.message); process.exit(1); });
ws.on('close', () => process.exit(0)); // the broker went away: nothing left to flood
await new Promise((resolve) => ws.once('open', resolve));
ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30 }));
await new Promise((resolve) => ws.once('message', resolve)); // CONNACK

const publish = mqttPacket.generate({ cmd: 'publish', topic: `devices/${clientId}/telemetry`, payload: '{"f":1}', qos: 0, dup: false, retain: false });
let sent = 0;
const flood = setInterval(() => {
  for (let i = 0; i < 200 && ws.bufferedAmount < 64 * 1024; i++, sent++) ws.send(publish);
}, 5);
process.once('SIGTERM', () => {
  clearInterval(flood);
  process.stdout.write(`${sent}\n`, () => process.exit(0));
});
console.log('ready');
