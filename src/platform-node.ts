// Platform code for Node (and Deno and Bun): the "node" condition of "#platform" (see
// platform.ts). The core is read from disk, vCPU threads are worker_threads.
import { readFile } from "node:fs/promises";
import { Worker, parentPort } from "node:worker_threads";
import type { Endpoint, ParentEndpoint } from "./endpoint.js";
import { WasmLoadError, compileResponse, describeError } from "./platform.js";

/**
 * build/dirtlog.wasm, or its debug build (asserts on: mmu_lock and vcpu->mutex rules, see
 * assembly/mmu_lock.ts and assembly/vcpu.ts) when the environment variable
 * DIRTLOG_CORE=debug is set; the repository's test suite runs against both builds (the
 * package ships the release build only).
 */
export function defaultCoreUrl(): URL {
  return process.env.DIRTLOG_CORE === "debug"
    ? new URL("../build/dirtlog.debug.wasm", import.meta.url)
    : new URL("../build/dirtlog.wasm", import.meta.url);
}

export async function compileWasmAt(url: URL): Promise<WebAssembly.Module> {
  if (url.protocol !== "file:") return compileResponse(url, await fetchOrFail(url));
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    // a fresh file buffer (never shared memory)
    bytes = (await readFile(url)) as Uint8Array<ArrayBuffer>;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    throw new WasmLoadError(code === "ENOENT" ? "missing" : "unreadable", `${url.href}: ${describeError(e)}`);
  }
  try {
    return await WebAssembly.compile(bytes);
  } catch (e) {
    throw new WasmLoadError("invalid", `${url.href} is not a WebAssembly module: ${describeError(e)}`);
  }
}

async function fetchOrFail(url: URL): Promise<Response> {
  try {
    return await fetch(url);
  } catch (e) {
    throw new WasmLoadError("unreadable", `${url.href}: ${describeError(e)}`);
  }
}

interface NodeWorkerLike {
  postMessage(message: unknown): void;
  on(event: "message" | "error" | "exit" | "messageerror", listener: (data: unknown) => void): void;
  ref(): void;
  unref(): void;
  terminate(): Promise<number>;
}

export async function spawnVcpuWorker(url?: string | URL): Promise<Endpoint> {
  const worker = url
    ? new Worker(url, { type: "module" } as object)
    : new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" } as object);
  return nodeEndpoint(worker as unknown as NodeWorkerLike);
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
  worker.on("error", (e) => fail(describeError(e)));
  worker.on("messageerror", (e) => fail(`a message could not be deserialized: ${describeError(e)}`));
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

export async function parentEndpoint(): Promise<ParentEndpoint> {
  const port = parentPort;
  if (!port) throw new Error("not running in a worker");
  return { postMessage: (m) => port.postMessage(m), onMessage: (l) => port.on("message", l) };
}
