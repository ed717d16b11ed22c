// Platform code — reading the core's bytes and starting workers — is chosen by the
// package's "imports" map, not by sniffing the runtime:
//
//   "#platform": { "browser": "./dist/platform-browser.js",
//                  "node":    "./dist/platform-node.js",
//                  "default": "./dist/platform-browser.js" }
//
// Node (and Deno and Bun, which set the "node" condition) load platform-node.js: the core
// is read from disk, vCPU threads are worker_threads. Bundlers for the web (Vite, esbuild,
// Rollup, webpack) and anything else load platform-browser.js: the core is fetched, vCPU
// threads are Web Workers. So no `node:` specifier is reachable from the browser build,
// and both files sit in dist/ next to vcpu-worker.js with the literal
// `new URL("./vcpu-worker.js", import.meta.url)` and `new URL("../build/dirtlog.wasm",
// import.meta.url)` forms that bundlers recognise.
//
// This file is the contract both implement (checked below, at compile time only) and what
// they share; it imports nothing platform-specific.
import type { Endpoint, ParentEndpoint } from "./endpoint.js";
import type * as BrowserPlatform from "./platform-browser.js";
import type * as NodePlatform from "./platform-node.js";

export interface Platform {
  /** Where the core is by default: build/dirtlog.wasm of this package. */
  defaultCoreUrl(): URL;
  /**
   * The WebAssembly module at `url`, compiled. Throws WasmLoadError when it cannot be read
   * or is not a WebAssembly module.
   */
  compileWasmAt(url: URL): Promise<WebAssembly.Module>;
  /**
   * Spawn the vCPU worker: dist/vcpu-worker.js next to the platform file, or `url` when
   * given (for bundlers and CSPs that place it elsewhere).
   */
  spawnVcpuWorker(url?: string | URL): Promise<Endpoint>;
  /** The worker side: its parent. */
  parentEndpoint(): Promise<ParentEndpoint>;
}

// Compile-time check that both implementations export the whole contract.
type Implements<T extends Platform> = T;
export type CheckedPlatforms = [Implements<typeof NodePlatform>, Implements<typeof BrowserPlatform>];

/** Why a wasm file could not be loaded. */
export type WasmLoadFailure =
  /** No such file (ENOENT) or HTTP 404/410. */
  | "missing"
  /** Anything else that kept its bytes from us: a network error, another HTTP status, EACCES… */
  | "unreadable"
  /** The bytes arrived but are not a WebAssembly module (e.g. an HTML fallback page). */
  | "invalid";

export class WasmLoadError extends Error {
  readonly failure: WasmLoadFailure;
  constructor(failure: WasmLoadFailure, message: string) {
    super(message);
    this.name = "WasmLoadError";
    this.failure = failure;
  }
}

export function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  if (typeof e === "object" && e !== null && "message" in e && (e as { message: unknown }).message) {
    return String((e as { message: unknown }).message);
  }
  return String(e);
}

/** Compile fetched bytes: streaming when the server says application/wasm, else from a buffer. */
export async function compileResponse(url: URL, response: Response): Promise<WebAssembly.Module> {
  if (!response.ok) {
    const missing = response.status === 404 || response.status === 410;
    throw new WasmLoadError(
      missing ? "missing" : "unreadable",
      `${url.href}: HTTP ${response.status} ${response.statusText}`.trim(),
    );
  }
  const type = response.headers.get("content-type") ?? "";
  try {
    // compileStreaming insists on application/wasm; a server that says otherwise (or a
    // data:/blob: URL) still serves bytes worth a try
    if (/^application\/wasm\b/i.test(type) && typeof WebAssembly.compileStreaming === "function") {
      return await WebAssembly.compileStreaming(response);
    }
    return await WebAssembly.compile(await response.arrayBuffer());
  } catch (e) {
    if (e instanceof WebAssembly.CompileError) {
      const served = type ? ` (served as ${type.split(";")[0]})` : "";
      throw new WasmLoadError("invalid", `${url.href} is not a WebAssembly module${served}: ${e.message}`);
    }
    throw new WasmLoadError("unreadable", `${url.href}: ${describeError(e)}`);
  }
}
