// One small endpoint adapter over Node's worker_threads and browser Web Workers (after
// comlink's node-adapter): both sides see postMessage / onMessage / terminate.

export interface Endpoint {
  postMessage(message: unknown): void;
  onMessage(listener: (data: unknown) => void): void;
  terminate(): Promise<void>;
}

interface NodeWorkerLike {
  postMessage(message: unknown): void;
  on(event: "message" | "error", listener: (data: unknown) => void): void;
  terminate(): Promise<number>;
}

const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";

/** Spawn the vCPU worker (dist/vcpu-worker.js) in Node or in a browser. */
export async function spawnVcpuWorker(): Promise<Endpoint> {
  if (isNode) {
    const { Worker } = await import("node:worker_threads");
    const worker = new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" } as object);
    return nodeEndpoint(worker as unknown as NodeWorkerLike);
  }
  const worker = new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" });
  return {
    postMessage: (m) => worker.postMessage(m),
    onMessage: (l) => worker.addEventListener("message", (e) => l(e.data)),
    terminate: async () => worker.terminate(),
  };
}

function nodeEndpoint(worker: NodeWorkerLike): Endpoint {
  return {
    postMessage: (m) => worker.postMessage(m),
    onMessage: (l) => worker.on("message", l),
    terminate: async () => {
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
