/**
 * Per-client publish limits over two windows (1 s and 60 s), for messages and
 * for bytes, as token buckets: four numbers to refill per check, no timers.
 * A byte bucket lets a publish through once it holds the publish's size or is
 * full, and may then go into debt: a packet larger than the bucket (allowed up
 * to BROKER_MAX_PACKET_BYTES) passes once the bucket has refilled, instead of
 * never.
 */
export interface PublishLimits {
  perS: number;
  burst: number;
  perMin: number;
  bytesPerS: number;
  bytesPerMin: number;
}

export type LimitHit = 'publish_messages' | 'publish_bytes';

export class PublishLimiter {
  private msgShort: number;
  private msgLong: number;
  private byteShort: number;
  private byteLong: number;
  private last: number;

  constructor(private readonly limits: PublishLimits, now = Date.now()) {
    this.msgShort = limits.burst;
    this.msgLong = limits.perMin;
    this.byteShort = limits.bytesPerS;
    this.byteLong = limits.bytesPerMin;
    this.last = now;
  }

  /** Takes one publish of `bytes` from every bucket, or returns which limit refused it (nothing is taken then). */
  take(bytes: number, now = Date.now()): LimitHit | null {
    const l = this.limits;
    const dt = (now - this.last) / 1000;
    if (dt > 0) {
      this.last = now;
      this.msgShort = Math.min(l.burst, this.msgShort + dt * l.perS);
      this.msgLong = Math.min(l.perMin, this.msgLong + (dt * l.perMin) / 60);
      this.byteShort = Math.min(l.bytesPerS, this.byteShort + dt * l.bytesPerS);
      this.byteLong = Math.min(l.bytesPerMin, this.byteLong + (dt * l.bytesPerMin) / 60);
    }
    if (this.msgShort < 1 || this.msgLong < 1) return 'publish_messages';
    if (this.byteShort < Math.min(bytes, l.bytesPerS) || this.byteLong < Math.min(bytes, l.bytesPerMin)) return 'publish_bytes';
    this.msgShort -= 1;
    this.msgLong -= 1;
    this.byteShort -= bytes;
    this.byteLong -= bytes;
    return null;
  }

  /** How long until a publish of `bytes` would pass again, in ms (0 when it would pass now). */
  msUntilAllowed(bytes: number): number {
    const l = this.limits;
    const waitS = Math.max(
      (1 - this.msgShort) / l.perS,
      ((1 - this.msgLong) * 60) / l.perMin,
      (Math.min(bytes, l.bytesPerS) - this.byteShort) / l.bytesPerS,
      ((Math.min(bytes, l.bytesPerMin) - this.byteLong) * 60) / l.bytesPerMin,
      0,
    );
    return Math.ceil(waitS * 1000);
  }
}
