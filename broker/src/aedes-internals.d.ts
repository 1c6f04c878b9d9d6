/** Members present at runtime in aedes 1.x that its typings leave out. */
export {};

declare module 'aedes' {
  interface Aedes {
    mq: {
      on(topic: string, fn: (packet: { topic: string; payload: Buffer }, done: () => void) => void, cb?: () => void): void;
    };
    clients: Record<string, Client>;
    /** The session store (aedes-persistence interface); typed `any` upstream. */
    persistence: unknown;
  }
}
