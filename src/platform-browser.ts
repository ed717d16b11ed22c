// Platform code for browsers and everything that is not Node: the "browser" and "default"
// conditions of "#platform" (see platform.ts). The core is fetched, vCPU threads are Web
// Workers (module workers). Nothing here imports a `node:` module.
import type { Endpoint, ParentEndpoint } from "./endpoint.js";
import { WasmLoadError, compileResponse, describeError } from "./platform.js";

/** build/dirtlog.wasm of this package (bundlers copy it and rewrite this URL). */
export function defaultCoreUrl(): URL {
  return new URL("../build/dirtlog.wasm", import.meta.url);
}

export async function compileWasmAt(url: URL): Promise<WebAssembly.Module> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new WasmLoadError("unreadable", `${url.href}: ${describeError(e)}`);
  }
  return compileResponse(url, response);
}

export async function spawnVcpuWorker(url?: string | URL): Promise<Endpoint> {
  // the literal `new Worker(new URL("./vcpu-worker.js", import.meta.url), { type: "module" })`
  // is what Vite, webpack and Parcel recognise to bundle the worker
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

export async function parentEndpoint(): Promise<ParentEndpoint> {
  const scope = globalThis as unknown as {
    postMessage(m: unknown): void;
    addEventListener(t: "message", l: (e: MessageEvent) => void): void;
  };
  return {
    postMessage: (m) => scope.postMessage(m),
    onMessage: (l) => scope.addEventListener("message", (e) => l(e.data)),
  };
}
