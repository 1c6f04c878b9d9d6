/** Cloud-to-device publishes: QoS 1, delivered on whichever node holds the device (cluster mode). */
import type { Aedes } from 'aedes';
import { topicFor, topics } from '@fleetwire/common';

const cloudToDevice = new Set(topics.filter((t) => t.direction === 'cloud-to-device').map((t) => t.class));

export async function publishToDevice(aedes: Aedes, deviceId: string, topicClass: string, payload: unknown): Promise<void> {
  if (!cloudToDevice.has(topicClass)) throw new Error(`${topicClass} is not a cloud-to-device topic class`);
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload));
  await new Promise<void>((resolve, reject) => {
    aedes.publish({ cmd: 'publish', topic: topicFor(topicClass, deviceId), payload: body, qos: 1, retain: false, dup: false },
      (err) => (err ? reject(err) : resolve()));
  });
}
