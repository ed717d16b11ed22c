// What dirtlog needs from the engine, checked synchronously: shared WebAssembly memory and
// atomics (threads), SharedArrayBuffer (only on cross-origin isolated pages in browsers),
// permission to compile WebAssembly (a CSP may forbid it), workers, BigInt. capabilities()
// answers with a boolean per requirement, `ok`, and what to do about each problem in words;
// createVm() fails at once with the same words instead of later with a raw DataCloneError.

export interface Capabilities {
  /** All requirements met. */
  ok: boolean;
  /** WebAssembly exists and may compile modules here (a CSP without 'wasm-unsafe-eval' forbids it). */
  webAssembly: boolean;
  /** A shared WebAssembly.Memory can be created (threads + SharedArrayBuffer). */
  sharedMemory: boolean;
  /** SharedArrayBuffer is available (browsers: only with cross-origin isolation). */
  sharedArrayBuffer: boolean;
  /** Browsers: the page or worker is cross-origin isolated (always true in Node). */
  crossOriginIsolated: boolean;
  /** Atomics (wait/notify) for the vCPU threads. */
  atomics: boolean;
  /** Worker threads (Node worker_threads, or Web Workers). */
  workers: boolean;
  /** BigInt (u64 fields). */
  bigint: boolean;
  /** One sentence per unmet requirement: what is missing and how to fix it. */
  problems: string[];
}

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";

// The smallest valid module: the header only. Compiling it is what a CSP forbids.
const EMPTY_MODULE = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);

/** What this engine offers dirtlog, checked now, synchronously. */
export function capabilities(): Capabilities {
  const g = globalThis as {
    crossOriginIsolated?: boolean;
    Worker?: unknown;
    SharedArrayBuffer?: unknown;
  };
  const problems: string[] = [];
  let webAssembly = typeof WebAssembly === "object";
  if (webAssembly) {
    try {
      new WebAssembly.Module(EMPTY_MODULE);
    } catch {
      webAssembly = false;
    }
  }
  if (!webAssembly) {
    problems.push(
      typeof WebAssembly === "object"
        ? "WebAssembly compilation is forbidden here: the Content-Security-Policy must allow it (script-src 'wasm-unsafe-eval')."
        : "WebAssembly is not available in this engine.",
    );
  }
  const crossOriginIsolated = isNode || g.crossOriginIsolated === true;
  const sharedArrayBuffer = typeof g.SharedArrayBuffer === "function";
  if (!crossOriginIsolated) {
    problems.push(
      "The page is not cross-origin isolated: serve it with the headers Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp (SharedArrayBuffer and shared WebAssembly memory need them).",
    );
  } else if (!sharedArrayBuffer) {
    problems.push("SharedArrayBuffer is not available in this engine.");
  }
  let sharedMemory = false;
  if (typeof WebAssembly === "object" && sharedArrayBuffer) {
    try {
      sharedMemory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true }).buffer instanceof (g.SharedArrayBuffer as typeof SharedArrayBuffer);
    } catch {
      sharedMemory = false;
    }
  }
  if (!sharedMemory && crossOriginIsolated && sharedArrayBuffer) {
    problems.push("WebAssembly threads (shared memory) are not supported by this engine.");
  }
  const atomics = typeof Atomics === "object" && typeof Atomics.wait === "function" && typeof Atomics.notify === "function";
  if (!atomics) problems.push("Atomics.wait/notify are not available in this engine.");
  const workers = isNode || typeof g.Worker === "function";
  if (!workers) problems.push("Workers are not available here (vCPU threads run in Web Workers).");
  const bigint = typeof BigInt === "function";
  if (!bigint) problems.push("BigInt is not available in this engine.");
  return {
    ok: problems.length === 0,
    webAssembly,
    sharedMemory,
    sharedArrayBuffer,
    crossOriginIsolated,
    atomics,
    workers,
    bigint,
    problems,
  };
}
