/**
 * Where outgoing messages (password-reset links) go. The service only knows
 * this interface; deployments pick a sender or pass their own to buildAuthService.
 */
import { appendFile, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from '@fleetwire/common';

export interface OutgoingMessage {
  kind: 'password-reset';
  to: string;
  subject: string;
  text: string;
  /** The link the recipient follows; it carries a secret. */
  link: string;
}

export interface MessageSender {
  readonly name: string;
  send(message: OutgoingMessage): Promise<void>;
}

/** Development: one JSON line per message in a file only the owner can read. */
export class OutboxSender implements MessageSender {
  readonly name = 'outbox';

  constructor(readonly file: string, private readonly log: Logger) {}

  async send(message: OutgoingMessage): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
    await appendFile(this.file, `${JSON.stringify({ at: new Date().toISOString(), ...message })}\n`, { mode: 0o600 });
    // The log line says where the message is, never what it carries.
    this.log.info({ kind: message.kind, to: message.to, outbox: this.file }, 'message written to the outbox');
  }
}

/** Production: POSTs the message as JSON to your mailer (any service that turns it into an email). */
export class WebhookSender implements MessageSender {
  readonly name = 'webhook';

  constructor(private readonly url: string, private readonly timeoutMs = 10_000) {}

  async send(message: OutgoingMessage): Promise<void> {
    const res = await fetch(this.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(message),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (!res.ok) throw new Error(`the reset webhook answered HTTP ${res.status}`);
  }
}
