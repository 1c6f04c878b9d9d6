/** The loopback MQTT/TCP listener for services, which authenticate with username "service" and a JWT password. */
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Aedes } from 'aedes';
import { normalizeIp } from '@fleetwire/common';
import { handleConnection } from './aedes-tuning.js';
import { newConnState } from './conn-state.js';
import type { Connections } from './connections.js';

export async function listenTcp(
  aedes: Aedes, connections: Connections, at: { port: number; host: string }, isDraining: () => boolean,
): Promise<{ server: Server; port: number }> {
  const server = createServer((socket) => {
    if (isDraining()) return void socket.destroy();
    const state = newConnState('tcp', normalizeIp(socket.remoteAddress), socket);
    connections.opened(state);
    socket.once('close', () => connections.closed(state));
    state.client = handleConnection(aedes, socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
