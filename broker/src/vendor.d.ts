/** Types for aedes-persistence-redis, which ships none. */
declare module 'aedes-persistence-redis' {
  export default function aedesPersistenceRedis(opts: { conn?: import('ioredis').Redis; maxSessionDelivery?: number }): NonNullable<import('aedes').AedesOptions['persistence']>;
}

/** bl's non-stream BufferList (CommonJS). */
declare module 'bl/BufferList.js' {
  class BufferList {
    constructor(initial?: Buffer | Buffer[]);
    length: number;
  }
  export default BufferList;
}
