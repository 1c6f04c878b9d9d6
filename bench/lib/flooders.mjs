// Unthrottled flooders for bench/flood-isolated.mjs: each publishes QoS 0 as fast as its
// socket accepts for DURATION s and reconnects when kicked. Each uses its own loopback
// source address (127.0.2.N), so per-address limits hit the flooders, not the victims.
//   node bench/lib/flooders.mjs <ws-url> '<[[id, token], ...]>' <seconds>
import WebSocket from 'ws';
import mqttPacket from 'mqtt-packet';
const [url, tokensJson, duration] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const end = Date.now() + Number(duration) * 1000;
let sent = 0;
tokens.forEach(([id, token], n) => {
  (function flood() {
    const ws = new WebSocket(url, ['mqtt', `auth.${token}`], { localAddress: `127.0.2.${n + 1}` });
    ws.on('error', () => {});
    ws.on('open', () => {
      ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: id, keepalive: 60 }));
      const pkt = mqttPacket.generate({ cmd: 'publish', topic: `devices/${id}/telemetry`, payload: Buffer.from('{"f":1}'), qos: 0, retain: false, dup: false });
      const pump = () => {
        while (ws.readyState === 1 && ws.bufferedAmount < 1 << 20 && Date.now() < end) { ws.send(pkt); sent++; }
        if (ws.readyState === 1 && Date.now() < end) setImmediate(pump);
      };
      setTimeout(pump, 50);
    });
    ws.on('close', () => { if (Date.now() < end) setTimeout(flood, 100); });
  })();
});
setTimeout(() => { console.log(JSON.stringify({ sent })); process.exit(0); }, Number(duration) * 1000 + 500);
