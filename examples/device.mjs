#!/usr/bin/env node
// A minimal device for the README tour: connects with its token in the subprotocol,
// sends a heartbeat every 10 s, answers the `ping` command (and refuses others), prints
// commands and sys notices, and how the connection ended.
// README.md quotes the lines between the readme: markers; broker/test/readme-clients.test.ts
// runs this file against a real broker and keeps the quote identical.
//   node examples/device.mjs <device-id> <token> [ws://localhost:8080/mqtt]
import mqtt from 'mqtt';
import WebSocket from 'ws';

const [id, token, url = 'ws://localhost:8080/mqtt'] = process.argv.slice(2);
if (!id || !token) {
  console.error('usage: node examples/device.mjs <device-id> <token> [url]');
  process.exit(2);
}

// readme:start
let socket; // the WebSocket, to print its close code
const client = mqtt.connect(url, {
  clientId: id, protocolVersion: 4, keepalive: 60, reconnectPeriod: 0,
  // The token travels as a second subprotocol; the server answers "mqtt" and never echoes it.
  createWebsocket: (u) => (socket = new WebSocket(u, ['mqtt', `auth.${token}`])),
});
// readme:end

let seq = 0;
const started = Date.now();
const beat = () => client.publish(`devices/${id}/heartbeat`, JSON.stringify({
  seq: seq++, uptime_s: Math.floor((Date.now() - started) / 1000), rssi: -60, heap_free: 150000, fw: 'example-1.0.0',
}));

client.on('connect', () => {
  console.log(`connected as ${id}`);
  client.subscribe([`devices/${id}/cmd`, `devices/${id}/sys`], { qos: 1 });
  beat();
  setInterval(beat, 10_000).unref();
  socket.once('close', (code, reason) => {
    console.log(`connection closed: code ${code} ${reason.toString()}`);
    process.exit(0);
  });
});
client.on('message', (topic, payload) => {
  console.log(`${topic}: ${payload}`);
  if (topic !== `devices/${id}/cmd`) return;
  const { cid, name } = JSON.parse(payload.toString());
  const result = name === 'ping'
    ? { cid, ok: true, result: { pong: true } }
    : { cid, ok: false, error: { code: 'CMD_UNKNOWN', message: `this example knows only ping, not ${name}` } };
  client.publish(`devices/${id}/cmd/result`, JSON.stringify(result), { qos: 1 });
});
client.on('error', (err) => {
  console.error(`refused: ${err.message}`);
  process.exit(1);
});
