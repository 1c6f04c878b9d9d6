/**
 * At most one log line per key and interval, for events a client can cause at will
 * (refused handshakes, refused sockets): a flood of them must not become a flood of
 * log lines. The lines left out are counted into the next one that is written.
 */
export class LogThrottle {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly intervalMs: number) {}

  /**
   * null when this line should be left out; otherwise how many were left out before it.
   * Keys must come from a small fixed set (codes, reasons), never from client input.
   */
  take(key: string, now = Date.now()): number | null {
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.suppressed++;
      return null;
    }
    this.last.set(key, { at: now, suppressed: 0 });
    return entry?.suppressed ?? 0;
  }
}
