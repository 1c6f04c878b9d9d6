// Lean MQTT 3.1.1 client for load generation.
//
// * Transport "ws": a minimal RFC 6455 client written on a raw net.Socket
//   (HTTP/1.1 Upgrade, client frames masked with an all-zero key so no XOR
//   pass is needed, server frames parsed in place, ping -> pong).
// * Transport "tcp": MQTT straight on the socket.
// * mqtt-packet encodes the control packets (CONNECT, SUBSCRIBE, ...);
//   PUBLISH buffers are pre-encoded by the caller and written as-is.
// * Incoming packets are framed by hand: a QoS0 PUBLISH costs a varint read
//   and one callback; no objects are allocated per message.
//
// Why not the `ws` client: it allocates per frame and emits one event per
// message, which made the generator core, not the broker, the bottleneck
// for fan-out. The `ws` package is still what bare-aedes uses server side.
import net from 'node:net';
import { randomBytes, createHash } from 'node:crypto';
import mqttPacket from 'mqtt-packet';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const ZERO_MASK = Buffer.alloc(4);

/** One client-to-server WebSocket binary frame, mask key 0 (payload unchanged). */
export function wsFrame(payload, opcode = 0x2) {
  const len = payload.length;
  let hdr;
  if (len < 126) {
    hdr = Buffer.allocUnsafe(6);
    hdr[0] = 0x80 | opcode; hdr[1] = 0x80 | len;
    ZERO_MASK.copy(hdr, 2);
  } else if (len < 65536) {
    hdr = Buffer.allocUnsafe(8);
    hdr[0] = 0x80 | opcode; hdr[1] = 0x80 | 126; hdr.writeUInt16BE(len, 2);
    ZERO_MASK.copy(hdr, 4);
  } else {
    hdr = Buffer.allocUnsafe(14);
    hdr[0] = 0x80 | opcode; hdr[1] = 0x80 | 127; hdr.writeBigUInt64BE(BigInt(len), 2);
    ZERO_MASK.copy(hdr, 10);
  }
  return Buffer.concat([hdr, payload]);
}

export function encode(packet) {
  return mqttPacket.generate(packet);
}

/** Pre-encoded QoS0 PUBLISH. */
export function publishPacket(topic, payload, qos = 0, messageId = 1) {
  return mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload), qos, retain: false, dup: false, messageId: qos ? messageId : undefined });
}

/** Reads topic and payload bounds of a PUBLISH packet body [start, end). */
export function publishParts(buf, start, end, b0) {
  const tl = buf.readUInt16BE(start);
  const topicStart = start + 2;
  const topicEnd = topicStart + tl;
  const qos = (b0 >> 1) & 3;
  const payloadStart = topicEnd + (qos ? 2 : 0);
  return { topicStart, topicEnd, payloadStart, payloadEnd: end, qos };
}

let clientSeq = 0;

export class MqttConn {
  /**
   * opts: { transport: 'ws'|'tcp', host, port, path, protocols: string[],
   *         localAddress, clientId, username, password, keepalive,
   *         onPublish(buf, start, end, b0, conn), onClose(conn), timeoutMs }
   */
  constructor(opts) {
    this.o = opts;
    this.id = ++clientSeq;
    this.transport = opts.transport;
    this.sock = null;
    this.received = 0;       // PUBLISH packets received
    this.wsFrames = 0;       // WebSocket frames received (diagnostic)
    this.reads = 0;          // socket 'data' events (diagnostic: ~ broker write syscalls that reached us)
    this.onPublish = opts.onPublish ?? null;
    this.closed = false;
    this.closeInfo = null;
    this._mq = null;          // pending partial MQTT bytes
    this._hdr = null;         // pending partial WS header bytes
    this._fRem = 0;           // bytes left in current WS frame payload
    this._fOp = 0;
    this._ctrl = null;        // control frame payload pieces
    this._handshake = null;   // HTTP response accumulator
    this._waiters = new Map();// 'connack' | 'suback:<id>' | 'pingresp' -> {resolve,reject}
    this._msgId = 1;
    this.connack = null;
    this.timings = {};
  }

  /** Opens the socket, upgrades if WS, sends CONNECT, resolves with CONNACK return code 0. */
  connect() {
    const o = this.o;
    const timeoutMs = o.timeoutMs ?? 10000;
    return new Promise((resolve, reject) => {
      let settled = false;
      const done = (err) => {
        if (settled) return; settled = true; clearTimeout(timer);
        if (err) { this.destroy(); reject(err); } else resolve(this);
      };
      const timer = setTimeout(() => done(new Error(`timeout after ${timeoutMs} ms (${this._stage ?? 'start'})`)), timeoutMs);
      this.timings.start = performance.now();
      this._stage = 'tcp';
      const sock = net.connect({ host: o.host ?? '127.0.0.1', port: o.port, localAddress: o.localAddress, noDelay: true });
      this.sock = sock;
      sock.setNoDelay(true);
      sock.on('error', (e) => { this.closeInfo ??= `socket error ${e.code ?? e.message}`; done(new Error(`${this._stage}: ${e.code ?? e.message}`)); });
      sock.on('close', () => {
        this.closed = true;
        this.closeInfo ??= 'socket closed by peer';
        done(new Error(`closed during ${this._stage}: ${this.closeInfo}`));
        for (const w of this._waiters.values()) w.reject(new Error(`connection closed: ${this.closeInfo}`));
        this._waiters.clear();
        if (this.o.onClose) this.o.onClose(this);
      });
      this._waiters.set('connack', {
        resolve: (rc) => {
          this.timings.connack = performance.now();
          if (rc === 0) done(); else done(new Error(`CONNACK return code ${rc}`));
        },
        reject: (e) => done(e),
      });
      sock.once('connect', () => {
        this.timings.tcp = performance.now();
        if (this.transport === 'ws') {
          this._stage = 'ws-upgrade';
          const key = randomBytes(16).toString('base64');
          this._wsKey = key;
          const protos = (o.protocols ?? ['mqtt']).join(', ');
          sock.on('data', (d) => this._onHandshakeData(d, done));
          sock.write(`GET ${o.path ?? '/mqtt'} HTTP/1.1\r\nHost: ${o.host ?? '127.0.0.1'}:${o.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${protos}\r\n\r\n`);
        } else {
          sock.on('data', (d) => { this.reads++; this._mqttData(d); });
          this._sendConnect();
        }
      });
    });
  }

  _sendConnect() {
    const o = this.o;
    this._stage = 'mqtt-connect';
    this.timings.connectSent = performance.now();
    const pkt = { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: o.clientId, keepalive: o.keepalive ?? 60 };
    if (o.username !== undefined) pkt.username = o.username;
    if (o.password !== undefined) pkt.password = Buffer.from(o.password);
    this.write(encode(pkt));
  }

  _onHandshakeData(d, done) {
    const buf = this._handshake ? Buffer.concat([this._handshake, d]) : d;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      if (buf.length > 16384) return done(new Error('oversized HTTP response'));
      this._handshake = buf; return;
    }
    this._handshake = null;
    const head = buf.subarray(0, end).toString('latin1');
    const status = /^HTTP\/1\.1 (\d{3})/.exec(head);
    if (!status || status[1] !== '101') {
      this.closeInfo = `HTTP ${status ? status[1] : '?'} on upgrade: ${head.split('\r\n')[0]}`;
      return done(new Error(this.closeInfo));
    }
    const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head);
    const want = createHash('sha1').update(this._wsKey + WS_GUID).digest('base64');
    if (!accept || accept[1] !== want) return done(new Error('bad Sec-WebSocket-Accept'));
    const proto = /\r\nsec-websocket-protocol:\s*([^\r]+)/i.exec(head);
    this.selectedProtocol = proto ? proto[1].trim() : null;
    this.timings.upgraded = performance.now();
    this.sock.removeAllListeners('data');
    this.sock.on('data', (x) => { this.reads++; this._wsData(x); });
    const rest = buf.subarray(end + 4);
    this._sendConnect();
    if (rest.length) this._wsData(rest);
  }

  // ---- WebSocket frame parsing (server frames are unmasked) ----
  _wsData(chunk) {
    let buf = chunk;
    if (this._hdr) { buf = Buffer.concat([this._hdr, chunk]); this._hdr = null; }
    const len = buf.length;
    let off = 0;
    while (off < len) {
      if (this._fRem > 0) {
        const n = Math.min(this._fRem, len - off);
        const piece = buf.subarray(off, off + n);
        off += n; this._fRem -= n;
        if (this._fOp < 8) this._mqttData(piece);
        else { this._ctrl.push(piece); if (this._fRem === 0) this._control(); }
        continue;
      }
      if (len - off < 2) { this._hdr = buf.subarray(off); return; }
      const b0 = buf[off]; const b1 = buf[off + 1];
      let plen = b1 & 127; let hl = 2;
      if (plen === 126) { if (len - off < 4) { this._hdr = buf.subarray(off); return; } plen = buf.readUInt16BE(off + 2); hl = 4; }
      else if (plen === 127) { if (len - off < 10) { this._hdr = buf.subarray(off); return; } plen = Number(buf.readBigUInt64BE(off + 2)); hl = 10; }
      if (b1 & 0x80) { this.closeInfo = 'server sent a masked frame'; this.destroy(); return; }
      off += hl;
      this.wsFrames++;
      this._fOp = b0 & 0x0f;
      this._fRem = plen;
      if (this._fOp >= 8) { this._ctrl = []; if (plen === 0) this._control(); }
    }
  }

  _control() {
    const payload = Buffer.concat(this._ctrl); this._ctrl = null;
    if (this._fOp === 0x9) { this.sock.write(wsFrame(payload, 0xA)); }         // ping -> pong
    else if (this._fOp === 0x8) {                                               // close
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      const reason = payload.length > 2 ? payload.subarray(2).toString() : '';
      this.closeInfo = `ws close ${code}${reason ? ' ' + reason : ''}`;
      this.wsCloseCode = code;
      if (!this.sock.destroyed) { this.sock.write(wsFrame(payload.subarray(0, 2), 0x8)); this.sock.end(); }
    }
  }

  // ---- MQTT framing ----
  _mqttData(chunk) {
    let buf = chunk;
    if (this._mq) { buf = Buffer.concat([this._mq, chunk]); this._mq = null; }
    const len = buf.length;
    let off = 0;
    while (len - off >= 2) {
      const b0 = buf[off];
      let i = off + 1; let rl = 0; let mul = 1; let byte;
      do {
        if (i >= len) { this._mq = buf.subarray(off); return; }
        byte = buf[i++]; rl += (byte & 127) * mul; mul *= 128;
      } while (byte & 128);
      const end = i + rl;
      if (end > len) { this._mq = buf.subarray(off); return; }
      if ((b0 >> 4) === 3) {
        this.received++;
        if (this.onPublish !== null) this.onPublish(buf, i, end, b0, this);
        if ((b0 & 6) !== 0) this._ackPublish(buf, i, b0);
      } else this._packet(b0 >> 4, buf, i, end);
      off = end;
    }
    if (off < len) this._mq = buf.subarray(off);
  }

  _ackPublish(buf, start, b0) {
    const tl = buf.readUInt16BE(start);
    const id = buf.readUInt16BE(start + 2 + tl);
    if (((b0 >> 1) & 3) === 1) this.write(encode({ cmd: 'puback', messageId: id }));
    else this.write(encode({ cmd: 'pubrec', messageId: id }));
  }

  _packet(type, buf, start, end) {
    switch (type) {
      case 2: { // CONNACK
        const rc = buf[start + 1];
        this.connack = rc;
        const w = this._waiters.get('connack'); this._waiters.delete('connack');
        if (w) w.resolve(rc);
        this._stage = 'connected';
        break;
      }
      case 9: { // SUBACK
        const id = buf.readUInt16BE(start);
        const codes = [...buf.subarray(start + 2, end)];
        const w = this._waiters.get('suback:' + id); this._waiters.delete('suback:' + id);
        if (w) w.resolve(codes);
        break;
      }
      case 13: { const w = this._waiters.get('pingresp'); this._waiters.delete('pingresp'); if (w) w.resolve(); break; }
      case 4: this.pubacks = (this.pubacks ?? 0) + 1; break;
      case 5: { const id = buf.readUInt16BE(start); this.write(encode({ cmd: 'pubrel', messageId: id })); break; }
      case 6: { const id = buf.readUInt16BE(start); this.write(encode({ cmd: 'pubcomp', messageId: id })); break; }
      default: break;
    }
  }

  _wait(key, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this._waiters.delete(key); reject(new Error(`${key} timeout`)); }, timeoutMs);
      this._waiters.set(key, { resolve: (v) => { clearTimeout(t); resolve(v); }, reject: (e) => { clearTimeout(t); reject(e); } });
    });
  }

  async subscribe(topic, qos = 0) {
    const id = this._msgId++;
    const p = this._wait('suback:' + id);
    this.write(encode({ cmd: 'subscribe', messageId: id, subscriptions: [{ topic, qos }] }));
    const codes = await p;
    if (codes.some((c) => c >= 0x80)) throw new Error(`SUBACK refused ${topic}: ${codes.join(',')}`);
    return codes;
  }

  async ping() {
    const p = this._wait('pingresp');
    this.write(encode({ cmd: 'pingreq' }));
    return p;
  }

  /** Writes one MQTT packet (or several concatenated) as one WS frame / TCP write. */
  write(mqttBytes) {
    if (this.closed || !this.sock || this.sock.destroyed) return false;
    return this.sock.write(this.transport === 'ws' ? wsFrame(mqttBytes) : mqttBytes);
  }

  /** Writes bytes that are already framed for this transport (see frameFor). */
  writeRaw(bytes) {
    if (this.closed || this.sock.destroyed) return false;
    return this.sock.write(bytes);
  }

  /** The wire bytes of one MQTT packet for this transport, for pre-encoding. */
  frameFor(mqttBytes) {
    return this.transport === 'ws' ? wsFrame(mqttBytes) : mqttBytes;
  }

  get writeQueued() { return this.sock ? this.sock.writableLength : 0; }

  /** DISCONNECT, WS close, FIN. */
  end() {
    if (this.closed || !this.sock || this.sock.destroyed) return;
    this.closeInfo ??= 'closed by client';
    try {
      this.write(encode({ cmd: 'disconnect' }));
      if (this.transport === 'ws') this.sock.write(wsFrame(Buffer.from([0x03, 0xe8]), 0x8));
      this.sock.end();
    } catch { /* ignore */ }
    setTimeout(() => this.destroy(), 2000).unref();
  }

  destroy() {
    this.closeInfo ??= 'destroyed by client';
    if (this.sock && !this.sock.destroyed) this.sock.destroy();
  }
}

/** Source addresses 127.<a>.<b>.<c> for spreading connections, skipping .0 and .255. */
export function loopbackAddress(index, base = 2) {
  // base selects the second octet so scripts do not overlap: 127.<base>.x.y
  const x = Math.floor(index / 254) % 254;
  const y = (index % 254) + 1;
  return `127.${base}.${x}.${y}`;
}
