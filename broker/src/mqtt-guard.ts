/**
 * A streaming scan of MQTT fixed headers (MQTT 3.1.1 §2.2) in front of the
 * parser. It enforces the packet size limit, the CONNECT rules and the
 * per-client publish limits before a byte reaches mqtt-packet or mqemitter, at
 * the cost of reading two bytes per packet. The common case (whole packets,
 * all allowed) passes the frame through without a copy.
 *
 * Over a publish limit, QoS 0 and QoS 1/2 differ. A QoS 0 publish carries no
 * delivery promise, so it is dropped. A QoS 1/2 publish must be answered
 * [MQTT-4.3.2-2], and a 3.1.1 client does not retransmit while connected, so
 * it is held, with everything after it, until release() finds room for it:
 * backpressure, not loss.
 */
import type { LimitHit, PublishLimiter } from './publish-limiter.js';

export type GuardViolation = 'packet-too-large' | 'malformed';

export class GuardError extends Error {
  constructor(readonly violation: GuardViolation, message: string) {
    super(message);
  }
}

export interface GuardEvents<Owner> {
  /** A QoS 0 publish over a limit was dropped. One object serves every connection. */
  onDrop(owner: Owner, limit: LimitHit, bytes: number): void;
  /** A QoS 1/2 publish over a limit is held, with all input after it, until release(). */
  onHold(owner: Owner, limit: LimitHit, bytes: number): void;
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
  /** Input from a held QoS 1/2 publish on, waiting for release(); null when nothing is held. */
  private held: Buffer[] | null = null;
  private sawConnect = false;
  /** After a violation nothing more passes: the connection is being closed. */
  private failed = false;

  constructor(limiter: PublishLimiter | null, private readonly maxPacketBytes: number, private readonly events: GuardEvents<Owner>) {
    this.limiter = limiter;
  }

  /** Returns the bytes to hand to the MQTT parser (`buf` itself when nothing changed), or null when nothing passes. */
  filter(buf: Buffer): Buffer | null {
    if (this.failed) return null;
    if (this.held) {
      this.held.push(buf);
      return null;
    }
    return this.checked(buf);
  }

  /** Whether a QoS 1/2 publish is waiting for room under the limits. */
  get holding(): boolean {
    return this.held !== null;
  }

  /** Scans the held input again: returns what may pass now; it may hold again (onHold is called then). */
  release(): Buffer | null {
    const held = this.held;
    if (!held || this.failed) return null;
    this.held = null;
    return this.checked(held.length === 1 ? held[0]! : Buffer.concat(held));
  }

  private checked(buf: Buffer): Buffer | null {
    try {
      return this.scan(buf);
    } catch (err) {
      this.failed = true;
      this.held = null;
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
      // Parsed in place; only a header split across frames is copied (into `partial`).
      const partial = this.heldHeader;
      const headerStart = i;
      let headerLen = 0;
      let first = 0;
      let remaining = 0;
      let mul = 1;
      let complete = false;
      const partialLen = partial ? partial.length : 0;
      for (let k = 0; ;) {
        let b: number;
        if (k < partialLen) b = partial![k++]!;
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
        this.heldHeader = partial ? Buffer.concat([partial, buf.subarray(headerStart, len)]) : Buffer.from(buf.subarray(headerStart, len));
        flush(headerStart);
        runStart = len;
        break;
      }
      this.heldHeader = null;
      const continuing = partial !== null;
      const total = headerLen + remaining;
      const type = first >> 4;
      if (type === 0 || type === 15) throw new GuardError('malformed', `reserved MQTT packet type ${type}`);
      if (!this.sawConnect) {
        if (type !== CONNECT) throw new GuardError('malformed', 'the first packet must be CONNECT [MQTT-3.1.0-1]');
        this.sawConnect = true;
      } else if (type === CONNECT) {
        throw new GuardError('malformed', 'a second CONNECT on one connection is a protocol violation [MQTT-3.1.0-2]');
      }
      if (total > this.maxPacketBytes) {
        throw new GuardError('packet-too-large', `MQTT packet of ${total} bytes exceeds the ${this.maxPacketBytes}-byte limit`);
      }
      const hit = type === PUBLISH && this.limiter ? this.limiter.take(total) : null;
      if (hit && (first & 0x06) !== 0) {
        // QoS 1/2: hold this packet and everything after it; what came before passes.
        flush(headerStart);
        this.held = partial ? [partial, buf.subarray(headerStart)] : [buf.subarray(headerStart)];
        runStart = len;
        this.events.onHold(this.owner!, hit, total);
        break;
      }
      if (hit) {
        this.events.onDrop(this.owner!, hit, total);
        flush(headerStart);
        runStart = i;
        this.dropLeft = remaining;
      } else {
        if (continuing) {
          flush(headerStart);
          out!.push(partial, buf.subarray(headerStart, i));
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
