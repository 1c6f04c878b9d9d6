/** Real broker processes (node broker/dist/main.js) for drain and cluster tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { REDIS_URL } from './helpers.js';

const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));

export interface BrokerProcess {
  child: ChildProcess;
  port: number;
  nodeId: string;
  url: string;
  httpUrl: string;
  output: string[];
  exited: Promise<{ code: number | null; at: number }>;
}

export async function spawnBroker(env: Record<string, string>): Promise<BrokerProcess> {
  const child = spawn(process.execPath, [MAIN], {
    env: { ...process.env, REDIS_URL, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const exited = new Promise<{ code: number | null; at: number }>((r) => child.once('exit', (code) => r({ code, at: Date.now() })));
  const listening = new Promise<{ port: number; nodeId: string }>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        output.push(line);
        try {
          const rec = JSON.parse(line) as { msg?: string; port?: number; node?: string };
          if (rec.msg === 'broker listening') resolve({ port: rec.port!, nodeId: rec.node! });
        } catch { /* not JSON */ }
      }
    });
    child.stderr!.on('data', (d: Buffer) => output.push(d.toString()));
    void exited.then(({ code }) => reject(new Error(`broker exited with ${code} before listening:\n${output.join('\n')}`)));
  });
  const { port, nodeId } = await listening;
  return { child, port, nodeId, url: `ws://127.0.0.1:${port}/mqtt`, httpUrl: `http://127.0.0.1:${port}`, output, exited };
}

export async function stop(p: BrokerProcess): Promise<void> {
  if (p.child.exitCode !== null) return;
  p.child.kill('SIGKILL');
  await p.exited;
}
