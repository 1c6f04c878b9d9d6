// Talks to a Node broker started with --inspect=127.0.0.1:<port>: forced GC
// and CPU profiling of exactly the measured interval. Works on any Node
// process, no code in the broker needed.
import WebSocket from 'ws';

export async function openInspector(port, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let url;
  while (!url) {
    try {
      const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      url = list[0]?.webSocketDebuggerUrl;
    } catch { /* not up yet */ }
    if (!url) {
      if (Date.now() > deadline) throw new Error(`inspector on ${port} not reachable`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  let id = 0;
  const pending = new Map();
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id); pending.delete(msg.id);
      if (msg.error) reject(new Error(msg.error.message)); else resolve(msg.result);
    }
  });
  const call = (method, params = {}, callTimeoutMs = 60000) => new Promise((resolve, reject) => {
    const mid = ++id;
    const t = setTimeout(() => { pending.delete(mid); reject(new Error(`${method} timeout`)); }, callTimeoutMs);
    pending.set(mid, { resolve: (v) => { clearTimeout(t); resolve(v); }, reject: (e) => { clearTimeout(t); reject(e); } });
    ws.send(JSON.stringify({ id: mid, method, params }));
  });
  return {
    call,
    async gc() { await call('HeapProfiler.enable'); await call('HeapProfiler.collectGarbage'); await call('HeapProfiler.collectGarbage'); },
    async heapUsed() {
      const r = await call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
      return JSON.parse(r.result.value);
    },
    async profileStart(intervalUs = 1000) { await call('Profiler.enable'); await call('Profiler.setSamplingInterval', { interval: intervalUs }); await call('Profiler.start'); },
    async profileStop() { const r = await call('Profiler.stop'); return r.profile; },
    close() { ws.close(); },
  };
}

/** Top N functions by self time from a V8 .cpuprofile object. */
export function topSelf(profile, n = 10) {
  const byId = new Map(profile.nodes.map((nd) => [nd.id, nd]));
  const self = new Map();
  const total = profile.samples.length;
  const counts = new Map();
  for (const s of profile.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  for (const [nid, c] of counts) {
    const nd = byId.get(nid);
    const cf = nd.callFrame;
    const file = cf.url ? cf.url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, 'node_modules/').replace(/^\/work\/main\//, '') : '';
    const key = `${cf.functionName || '(anonymous)'}  ${file}${file ? ':' + (cf.lineNumber + 1) : ''}`;
    self.set(key, (self.get(key) ?? 0) + c);
  }
  return [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([fn, c]) => ({ fn, pct: (100 * c) / total }));
}

/** Self time aggregated per package / area, to see where the broker spends its core. */
export function selfByArea(profile) {
  const byId = new Map(profile.nodes.map((nd) => [nd.id, nd]));
  const counts = new Map();
  for (const s of profile.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  const area = new Map();
  for (const [nid, c] of counts) {
    const url = byId.get(nid).callFrame.url;
    let a;
    if (!url) a = `(${byId.get(nid).callFrame.functionName || 'native'})`;
    else if (url.includes('/node_modules/')) a = url.replace(/^.*\/node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1');
    else if (url.startsWith('node:')) a = url;
    else a = url.replace(/^file:\/\//, '').replace(/^\/work\/main\//, '').replace(/\/dist\/.*$/, '/dist');
    area.set(a, (area.get(a) ?? 0) + c);
  }
  const total = profile.samples.length;
  return [...area.entries()].sort((a, b) => b[1] - a[1]).map(([k, c]) => ({ area: k, pct: (100 * c) / total }));
}
