/**
 * Per-connection memory trims for Aedes internals, measured with heap
 * snapshots (bench/idle-rss.mjs): they matter at 100,000 idle connections.
 */
import type { Client } from 'aedes';
import BufferList from 'bl/BufferList.js';

/**
 * mqtt-packet's parser buffers input in a BufferListStream, a full Duplex
 * stream (two stream states and an event emitter) of which it only uses the
 * BufferList methods. A plain BufferList has them all at a fraction of the size.
 */
export function lightenParser(client: Client): void {
  const parser = (client as unknown as { _parser: { _list: { length: number } } })._parser;
  if (parser._list.length === 0) parser._list = new BufferList();
}
