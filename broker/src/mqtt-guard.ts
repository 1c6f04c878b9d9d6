/**
 * A streaming scan of MQTT fixed headers (MQTT 3.1.1 §2.2) in front of the
 * parser. It enforces the packet size limit and the per-client publish limits
 * before a byte reaches mqtt-packet or mqemitter, so a flood is dropped at the
 * cost of reading two bytes per packet. The common case (whole packets, all
 * allowed) passes the frame through without a copy.
 */
import type { LimitHit, PublishLimiter } from './publish-limiter.js';

export type GuardViolation = 'packet-too-large' | 'malformed';

export class GuardError extends Error {
  constructor(readonly violation: GuardViolation, message: string) {
    super(message);
  }
}

export interface GuardEvents<Owner> {
  /** Called for every dropped publish, with its size. One object serves every connection. */
  onDrop(owner: Owner, limit: LimitHit, bytes: number): void;
}

const PUBLISH = 3;
const CONNECT = 1;

export class MqttIngressGuard<Owner = unknown> {
  /** Null = unlimited (trusted services). */
  limiter: PublishLimiter | null;
  /** Whoever onDrop should hear about, e.g. the connection. */
  owner: Owner | null = null;
  private passLeft = 0;
  private dropLeft = 0;
  /** Bytes of a fixed header that began in an earlier frame, or null (the usual case). */
  private heldHeader: Buffer | null = null;
  private sawConnect = false;
  /** After a violation nothing more passes: the connection is being closed. */
  private failed = false;

  constructor(limiter: PublishLimiter | null, private readonly maxPacketBytes: number, private readonly events: GuardEvents<Owner>) {
    this.limiter = limiter;
  }

  /** Returns the bytes to hand to the MQTT parser (`buf` itself when nothing changed), or null when nothing passes. */
  filter(buf: Buffer): Buffer | null {
    if (this.failed) return null;
    try {
      return this.scan(buf);
    } catch (err) {
      this.failed = true;
      throw err;
    }
  }

  private scan(buf: Buffer): Buffer | null {
    const len = buf.length;
    let out: Buffer[] | null = null; // allocated only when the output differs from buf
    let runStart = 0; // start of the pending pass run in buf
    let i = 0;
    const flush = (end: number): void => {
      out ??= [];
      if (end > runStart) out.push(buf.subarray(runStart, end));
    };

    while (i < len) {
      if (this.passLeft > 0) {
        const n = Math.min(this.passLeft, len - i);
        this.passLeft -= n;
        i += n;
        continue;
      }
      if (this.dropLeft > 0) {
        const n = Math.min(this.dropLeft, len - i);
        if (runStart < i) flush(i);
        out ??= [];
        this.dropLeft -= n;
        i += n;
        runStart = i;
        continue;
      }
      // A packet boundary: the fixed header is 1 type byte + 1..4 remaining-length bytes.
      // Parsed in place; only a header split across frames is copied (into `held`).
      const held = this.heldHeader;
      const headerStart = i;
      let headerLen = 0;
      let first = 0;
      let remaining = 0;
      let mul = 1;
      let complete = false;
      const heldLen = held ? held.length : 0;
      for (let k = 0; ;) {
        let b: number;
        if (k < heldLen) b = held![k++]!;
        else if (i < len) b = buf[i++]!;
        else break;
        if (++headerLen === 1) {
          first = b;
          continue;
        }
        remaining += (b & 0x7f) * mul;
        mul *= 128;
        if ((b & 0x80) === 0) {
          complete = true;
          break;
        }
        if (headerLen === 5) throw new GuardError('malformed', 'MQTT remaining length longer than 4 bytes');
      }
      if (!complete) {
        // Hold the partial header back until its packet's verdict.
        this.heldHeader = held ? Buffer.concat([held, buf.subarray(headerStart, len)]) : Buffer.from(buf.subarray(headerStart, len));
        flush(headerStart);
        runStart = len;
        break;
      }
      this.heldHeader = null;
      const continuing = held !== null;
      const total = headerLen + remaining;
      const type = first >> 4;
      if (type === 0 || type === 15) throw new GuardError('malformed', `reserved MQTT packet type ${type}`);
      if (!this.sawConnect) {
        if (type !== CONNECT) throw new GuardError('malformed', 'the first packet must be CONNECT [MQTT-3.1.0-1]');
        this.sawConnect = true;
      }
      if (total > this.maxPacketBytes) {
        throw new GuardError('packet-too-large', `MQTT packet of ${total} bytes exceeds the ${this.maxPacketBytes}-byte limit`);
      }
      const hit = type === PUBLISH && this.limiter ? this.limiter.take(total) : null;
      if (hit) {
        this.events.onDrop(this.owner!, hit, total);
        flush(headerStart);
        runStart = i;
        this.dropLeft = remaining;
      } else {
        if (continuing) {
          flush(headerStart);
          out!.push(held, buf.subarray(headerStart, i));
          runStart = i;
        }
        this.passLeft = remaining;
      }
    }
    if (out === null) return buf;
    const pieces: Buffer[] = out;
    if (runStart < len) pieces.push(buf.subarray(runStart, len));
    if (pieces.length === 0) return null;
    return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
  }
}
