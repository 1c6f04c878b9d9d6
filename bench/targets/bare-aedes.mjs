// Baseline broker: Aedes 1.2 with no auth, no limits, no persistence beyond
// the in-memory defaults. WebSocket (ws 8, path /mqtt) and optional plain TCP.
//   node bench/targets/bare-aedes.mjs --port 8883 [--tcp-port 1883] [--host 127.0.0.1]
// Prints "ready ws=<port> tcp=<port>" on stdout once both listeners are up.
import { Aedes } from 'aedes';
import { WebSocketServer, createWebSocketStream } from 'ws';
import http from 'node:http';
import net from 'node:net';

const args = process.argv.slice(2);
const flag = (name, def) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : def; };
const host = flag('host', '127.0.0.1');
const port = Number(flag('port', '8883'));
const tcpPort = Number(flag('tcp-port', '0'));

const broker = await Aedes.createBroker();

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({
  server,
  path: '/mqtt',
  perMessageDeflate: false,
  handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false),
});
wss.on('connection', (ws, req) => {
  const stream = createWebSocketStream(ws);
  stream.on('error', () => {});
  broker.handle(stream, req);
});
await new Promise((r) => server.listen(port, host, r));

let tcp = null;
if (tcpPort) {
  tcp = net.createServer(broker.handle);
  await new Promise((r) => tcp.listen(tcpPort, host, r));
}

process.stdout.write(`ready ws=${port} tcp=${tcpPort}\n`);

const stop = () => {
  wss.close(); server.close(); if (tcp) tcp.close();
  broker.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
