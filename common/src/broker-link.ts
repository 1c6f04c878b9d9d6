/**
 * A service's MQTT connection to a broker node, as a service client: the device service
 * publishes commands (`devices/{id}/cmd`) and alerts (`fleet/alerts/{id}`) and
 * subscribes to presence (`fleet/presence/+`); the ml-bridge publishes results
 * (`devices/{id}/ml/result`). Publishing through the broker, not
 * around it, means a command reaches the device on whichever node holds it, waits in
 * the device's persistent session when it is offline, and passes the same ACL.
 *
 * The token is a service token signed with the local key ring, offered in the
 * subprotocol list like any client's. It is renewed by reconnecting before it
 * expires; subscriptions are renewed with the connection (retained presence is
 * sent again, which the seq check makes harmless).
 */
import mqtt, { type MqttClient } from 'mqtt';
import WebSocket from 'ws';
import { signToken, type SigningKey } from './jwt.js';
import type { Logger } from './logger.js';

const TOKEN_TTL_S = 3600;
/** Reconnect with a fresh token this long before the current one expires. */
const RENEW_BEFORE_S = 300;

export interface BrokerLinkOptions {
  /** Read on every (re)connect: in `fleetwire up` it is known only once the port listens. */
  url: () => string;
  /** The key that signs now (read on every connect, so a rotation is followed). */
  signer: () => SigningKey;
  /** `service:<name>:<node>`, e.g. `service:device-service:<node>`: the broker accepts a service's client id only when it starts with `service:<sub>:`, so the token's sub is taken from it. */
  clientId: string;
  log: Logger;
  /** Only for this process's own loopback listener when it serves TLS with a certificate for another name. */
  allowSelfSigned?: boolean;
}

/** The `<name>` of a `service:<name>:<node>` client id. */
function serviceName(clientId: string): string {
  const [typ, name] = clientId.split(':');
  if (typ !== 'service' || !name) throw new Error(`a broker link's client id is service:<name>:<node>, not ${clientId}`);
  return name;
}

export type MessageHandler = (topic: string, payload: Buffer) => void;

export class BrokerLink {
  private client: MqttClient | null = null;
  private token = '';
  private renewTimer: NodeJS.Timeout | undefined;
  private readonly handlers: { filter: string; prefix: string; handle: MessageHandler }[] = [];
  private closed = false;

  constructor(private readonly o: BrokerLinkOptions) {}

  /** Resolves once connected the first time; later drops reconnect by themselves. */
  async start(): Promise<void> {
    await this.renewToken();
    const client = mqtt.connect(this.o.url(), {
      clientId: this.o.clientId, protocolVersion: 4, clean: true, keepalive: 30, reconnectPeriod: 1000, connectTimeout: 10_000,
      resubscribe: true,
      createWebsocket: (url: string) => new WebSocket(url, ['mqtt', `auth.${this.token}`], { rejectUnauthorized: !this.o.allowSelfSigned }),
    });
    this.client = client;
    client.on('message', (topic, payload) => {
      for (const h of this.handlers) if (topic.startsWith(h.prefix)) h.handle(topic, payload);
    });
    client.on('error', (err) => this.o.log.warn({ err: err.message, url: this.o.url() }, 'broker link error'));
    client.on('offline', () => { if (!this.closed) this.o.log.warn({ url: this.o.url() }, 'broker link down; reconnecting'); });
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    this.o.log.info({ url: this.o.url(), client_id: this.o.clientId }, 'broker link up');
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** QoS 1 by default; resolves when the broker acknowledged it (it then delivers it per MQTT). */
  async publish(topic: string, payload: unknown, opts: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
    if (!this.client) throw new Error('broker link not started');
    const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload));
    await this.client.publishAsync(topic, body, { qos: opts.qos ?? 1, retain: opts.retain ?? false });
  }

  /** Subscribes `filter` (ending in `+` or `#`) at QoS 1; `handle` gets the messages under it. */
  async subscribe(filter: string, handle: MessageHandler): Promise<void> {
    if (!this.client) throw new Error('broker link not started');
    this.handlers.push({ filter, prefix: filter.replace(/[+#]$/, ''), handle });
    const granted = await this.client.subscribeAsync(filter, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new Error(`the broker refused the subscription ${filter}`);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.renewTimer);
    await this.client?.endAsync().catch(() => undefined);
  }

  /** Mints the token the next (re)connect offers, and schedules the next renewal. */
  private async renewToken(): Promise<void> {
    this.token = await signToken(this.o.signer(), { sub: serviceName(this.o.clientId), typ: 'service', ttlSeconds: TOKEN_TTL_S });
    this.renewTimer = setTimeout(() => {
      void this.renewToken().then(() => {
        // The broker would end the connection at the old token's exp: reconnect now, with the new one.
        if (!this.closed && this.client) this.client.end(false, {}, () => { if (!this.closed) this.client?.reconnect(); });
      }, (err: unknown) => this.o.log.error({ err }, 'renewing the broker link token failed'));
    }, (TOKEN_TTL_S - RENEW_BEFORE_S) * 1000);
    this.renewTimer.unref();
  }
}
