// One small endpoint adapter over Node's worker_threads and browser Web Workers (after
// comlink's node-adapter): both sides see postMessage / onMessage; the parent side also
// sees the worker's failures (a script that does not load, an uncaught error, an exit)
// as one onFailure callback, and ref/unref (Node: whether an idle worker keeps the
// process alive; browsers have no such notion).

export interface Endpoint {
  postMessage(message: unknown): void;
  onMessage(listener: (data: unknown) => void): void;
  /** Called once, when the worker failed to load, threw, or exited. */
  onFailure(listener: (why: string) => void): void;
  ref(): void;
  unref(): void;
  terminate(): Promise<void>;
}

interface NodeWorkerLike {
  postMessage(message: unknown): void;
  on(event: "message" | "error" | "exit" | "messageerror", listener: (data: unknown) => void): void;
  ref(): void;
  unref(): void;
  terminate(): Promise<number>;
}

const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  if (typeof e === "object" && e !== null && "message" in e && (e as { message: unknown }).message) {
    return String((e as { message: unknown }).message);
  }
  return String(e);
}

/**
 * Spawn the vCPU worker: dist/vcpu-worker.js next to this file, or `url` when given (for
 * bundlers and CSPs that place it elsewhere).
 */
export async function spawnVcpuWorker(url?: string | URL): Promise<Endpoint> {
  if (isNode) {
    const { Worker } = await import("node:worker_threads");
    const worker = url
      ? new Worker(url, { type: "module" } as object)
      : new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" } as object);
    return nodeEndpoint(worker as unknown as NodeWorkerLike);
  }
  const worker = url
    ? new Worker(url, { type: "module" })
    : new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" });
  let failed: ((why: string) => void) | undefined;
  let failure: string | undefined;
  const fail = (why: string) => {
    if (failure !== undefined) return;
    failure = why;
    failed?.(why);
  };
  // a module script that 404s or does not parse fires a plain Event without a message
  worker.addEventListener("error", (e) =>
    fail((e as ErrorEvent).message || "the worker script failed to load (check its URL and MIME type)"),
  );
  worker.addEventListener("messageerror", () => fail("a message to the worker could not be deserialized"));
  return {
    postMessage: (m) => worker.postMessage(m),
    onMessage: (l) => worker.addEventListener("message", (e) => l(e.data)),
    onFailure: (l) => {
      failed = l;
      if (failure !== undefined) l(failure);
    },
    ref: () => {},
    unref: () => {},
    terminate: async () => worker.terminate(),
  };
}

function nodeEndpoint(worker: NodeWorkerLike): Endpoint {
  let failed: ((why: string) => void) | undefined;
  let failure: string | undefined;
  let terminating = false;
  const fail = (why: string) => {
    if (failure !== undefined || terminating) return;
    failure = why;
    failed?.(why);
  };
  worker.on("error", (e) => fail(describe(e)));
  worker.on("messageerror", (e) => fail(`a message could not be deserialized: ${describe(e)}`));
  worker.on("exit", (code) => fail(`the worker exited (code ${code})`));
  return {
    postMessage: (m) => worker.postMessage(m),
    onMessage: (l) => worker.on("message", l),
    onFailure: (l) => {
      failed = l;
      if (failure !== undefined) l(failure);
    },
    ref: () => worker.ref(),
    unref: () => worker.unref(),
    terminate: async () => {
      terminating = true;
      await worker.terminate();
    },
  };
}

/** The worker side: its parent, in Node (parentPort) or in a browser (self). */
export async function parentEndpoint(): Promise<Pick<Endpoint, "postMessage" | "onMessage">> {
  if (isNode) {
    const { parentPort } = await import("node:worker_threads");
    if (!parentPort) throw new Error("not running in a worker");
    return { postMessage: (m) => parentPort.postMessage(m), onMessage: (l) => parentPort.on("message", l) };
  }
  const scope = globalThis as unknown as {
    postMessage(m: unknown): void;
    addEventListener(t: "message", l: (e: MessageEvent) => void): void;
  };
  return { postMessage: (m) => scope.postMessage(m), onMessage: (l) => scope.addEventListener("message", (e) => l(e.data)) };
}
