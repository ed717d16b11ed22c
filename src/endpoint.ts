// One small endpoint adapter over Node's worker_threads and browser Web Workers (after
// comlink's node-adapter): both sides see postMessage / onMessage; the parent side also
// sees the worker's failures (a script that does not load, an uncaught error, an exit)
// as one onFailure callback, and ref/unref (Node: whether an idle worker keeps the
// process alive; browsers have no such notion).
//
// The two implementations live in platform-node.ts and platform-browser.ts (see
// platform.ts); this file holds the contract only.

export interface Endpoint {
  postMessage(message: unknown): void;
  onMessage(listener: (data: unknown) => void): void;
  /** Called once, when the worker failed to load, threw, or exited. */
  onFailure(listener: (why: string) => void): void;
  ref(): void;
  unref(): void;
  terminate(): Promise<void>;
}

/** The worker side of an endpoint: its parent. */
export type ParentEndpoint = Pick<Endpoint, "postMessage" | "onMessage">;
