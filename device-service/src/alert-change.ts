/** A silence alert change, as published on `fleet/alerts/{id}` (contracts/schemas/alert.schema.json). */
export interface AlertChange {
  device_id: string;
  kind: 'silence';
  state: 'raised' | 'cleared';
  /** Unix ms of this change. */
  at: number;
  /** Unix ms of the last heartbeat before the silence. */
  last_seen: number;
  /** The device's learned silence threshold when the alert was raised. */
  threshold_ms: number;
  /** Cleared only: from last_seen to the heartbeat that ended the silence. */
  silent_for_ms?: number;
}

/** Where alert changes go (the alerts part: topic, alert log, metrics, webhook). Never throws, never blocks the caller. */
export interface AlertSink {
  emit(changes: readonly AlertChange[]): void;
}
