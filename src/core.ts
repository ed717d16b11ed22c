// Loading the core: build/dirtlog.wasm is compiled once per process (or page) and the
// same WebAssembly.Module is instantiated over each VM's shared memory. How the bytes are
// read (disk or fetch) is platform code, chosen by the package's "imports" map (platform.ts).
import { compileWasmAt, defaultCoreUrl } from "#platform";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import { WasmLoadError } from "./platform.js";

// The public types name WebAssembly.Module and WebAssembly.Memory. TypeScript declares the
// WebAssembly namespace only in its DOM and WebWorker libs, and @types/node not at all, so a
// Node project compiling with lib ["ES2022"] and skipLibCheck false would fail on this
// package's .d.ts ("Cannot find namespace 'WebAssembly'"). Empty interfaces merge with any
// fuller declaration (DOM's, a future @types/node's) without conflict, and make the names
// resolve where there is none.
declare global {
  namespace WebAssembly {
    interface Module {}
    interface Memory {}
  }
}

/** Raw exports of build/dirtlog.wasm (addresses are numbers; u64 values are bigints). */
export interface CoreExports {
  kvm_vm_init(
    vm: number,
    slots: number,
    sorted: number,
    poolBase: number,
    poolPages: number,
    vcpuTable: number,
    pml: number,
    tlbModel: number,
  ): number;
  kvm_vcpu_init(vm: number, vcpu: number, id: number, ring: number, priv: number, pmlBuffer: number, tlb: number): void;
  kvm_vcpu_kick(vcpu: number): void;
  /** Exit reason, or -EBUSY when another thread holds vcpu->mutex (tag: see assembly/vcpu.ts). */
  kvm_run(vm: number, vcpu: number, tag: number): number;
  kvm_vcpu_lock(vcpu: number, tag: number): number;
  kvm_vcpu_unlock(vcpu: number, tag: number): number;
  /** Mark vcpu->mutex as waited for; the value to sleep on, or 0 when it is free. */
  kvm_vcpu_mutex_wait_prepare(vcpu: number): number;
  kvm_flush_remote_tlbs(vm: number, canBlock: number): void;
  /** How many ring entries from `fetch` (at most `max`) are exactly DIRTY (assembly/ring_reaper.ts). */
  dirty_ring_count(ring: number, entries: number, fetch: number, max: number): number;
  /**
   * Harvest up to `max` DIRTY entries from `fetch` (no wrap): slots to the u32 array at
   * `slots`, offsets to the f64 array at `offsets`, entries marked RESET; returns the count.
   */
  dirty_ring_collect(ring: number, entries: number, fetch: number, max: number, slots: number, offsets: number): number;
  kvm_write_guest(vm: number, vcpu: number, tag: number, gpa: bigint, value: bigint, canBlock: number): number;
  // KVM's caches (assembly/kvm_write.ts, assembly/pfncache.ts) and the mmu notifier
  kvm_gfn_to_hva_cache_init(vm: number, ghc: number, gpa: bigint, len: number): number;
  kvm_write_guest_offset_cached(vm: number, vcpu: number, tag: number, ghc: number, src: number, offset: number, len: number, canBlock: number): number;
  kvm_read_guest_offset_cached(vm: number, ghc: number, dst: number, offset: number, len: number): number;
  kvm_gpc_init(vm: number, gpc: number): void;
  kvm_gpc_activate(gpc: number, gpa: bigint, len: number, canBlock: number): number;
  kvm_gpc_activate_hva(gpc: number, uhva: bigint, len: number, canBlock: number): number;
  kvm_gpc_refresh(gpc: number, len: number, canBlock: number): number;
  kvm_gpc_deactivate(gpc: number): void;
  kvm_gpc_check_locked(gpc: number, len: number): number;
  kvm_gpc_access(gpc: number, vcpu: number, tag: number, buf: number, offset: number, len: number, write: number, atomic: number, canBlock: number): number;
  kvm_mmu_notifier_invalidate_slot(vm: number, slot: number, rel: bigint, count: bigint, canBlock: number): number;
  kvm_xen_set_runstate_area(vcpu: number, tag: number, gpa: bigint, compat: number, canBlock: number): number;
  kvm_xen_update_runstate(vcpu: number, tag: number, state: number, now: bigint, atomic: number, canBlock: number): number;
  kvm_enable_dirty_log_ring(vm: number, bytes: number): number;
  kvm_enable_dirty_ring_with_bitmap(vm: number, flags: number): number;
  kvm_reset_dirty_rings(vm: number, canBlock: number): number;
  memslot_prepare(vm: number, slot: number, flags: number, gpa: bigint, size: bigint, backed: number, internal: number): number;
  memslot_commit(
    vm: number,
    slot: number,
    flags: number,
    gpa: bigint,
    size: bigint,
    change: number,
    meta: number,
    backing: number,
    hva: bigint,
    maxLevel: number,
    track: number,
    rmap: number,
    canBlock: number,
  ): number;
  // the shadow MMU (assembly/shadow.ts, assembly/rmap.ts)
  shadow_init(vm: number, ptePool: number, descs: number, spTable: number, hash: number): void;
  shadow_pte_pool_bytes(descs: number): number;
  kvm_rmap_count(vm: number, asId: number, gfn: bigint): number;
  pte_list_pool_init(pool: number, base: number, capacity: number): void;
  pte_list_pool_used(pool: number): number;
  pte_list_add(pool: number, head: number, sptep: number): number;
  pte_list_remove(pool: number, head: number, sptep: number): number;
  pte_list_count(head: number): number;
  rmap_get_first(head: number, iter: number): number;
  rmap_get_next(iter: number): number;
  kvm_rmap_write_protect(vm: number, head: number, ptProtect: number): number;
  // write tracking (assembly/page_track.ts, assembly/mmu.ts)
  page_track_bytes(npages: bigint): bigint;
  kvm_page_track_alloc_slot(slot: number, region: number): void;
  kvm_page_track_enable(vm: number, queue: number, entries: number): void;
  kvm_page_track_set_notifiers(vm: number, count: number): void;
  /** add (delta 1) or remove (delta -1): 0 or -errno (EINVAL no slot, ENXIO tracking off). */
  kvm_write_track_update_gfn(vm: number, gfn: bigint, delta: number, canBlock: number): number;
  /** -1 without a slot in address space 0. */
  gfn_write_track_count(vm: number, gfn: bigint): number;
  /** 1 if an SPTE may be changed by a thread without mmu_lock (assembly/mmu.ts). */
  spte_has_volatile_bits(spte: bigint): number;
  // memory floors for bench/ (assembly/measure.ts)
  measure_plain_pass(addr: number, n: number, bits: bigint): bigint;
  measure_plain_pass_strided(addr: number, n: number, stride: number, bits: bigint): bigint;
  measure_atomic_pass(addr: number, n: number, bits: bigint): bigint;
  memslot_meta_bytes(npages: bigint): bigint;
  memslot_lookup(vm: number, asId: number, gfn: bigint): number;
  memslot_host_present_map(vm: number, slot: number): number;
  kvm_get_dirty_log(vm: number, slot: number, canBlock: number): number;
  kvm_dirty_log_done(vm: number, slot: number, count: number): void;
  kvm_clear_dirty_log_check(vm: number, slot: number, first: bigint, num: bigint): number;
  kvm_clear_dirty_log(vm: number, slot: number, first: bigint, num: bigint, canBlock: number): void;
  kvm_dirty_log_source(vm: number, slot: number): number;
  kvm_dirty_log_scratch(vm: number, slot: number): number;
  kvm_dirty_log_second(vm: number, slot: number): number;
  kvm_vcpu_write(vm: number, vcpu: number, tag: number, gpa: bigint, value: bigint): number;
  kvm_vcpu_read(vm: number, vcpu: number, tag: number, gpa: bigint): number;
  kvm_set_cr3(vm: number, vcpu: number, tag: number, cr3: bigint, mode: number): number;
  kvm_smm_changed(vm: number, vcpu: number, tag: number, entering: number): number;
  kvm_mmu_invlpg(vm: number, vcpu: number, tag: number, gva: bigint): number;
  kvm_vcpu_write_strided(
    vm: number,
    vcpu: number,
    tag: number,
    gpa: bigint,
    stride: bigint,
    count: number,
    value: bigint,
  ): number;
  memslot_host_touch(vm: number, slot: number, first: bigint, count: bigint, canBlock: number): number;
  tdp_walk(vm: number, asId: number, gfn: bigint): number;
  tdp_count_bits(vm: number, asId: number, gfn: bigint, npages: bigint, bits: bigint): bigint;
}

/** Pages the module declares as its minimum and maximum memory (asconfig.json). */
export const CORE_MIN_PAGES = 17;
export const CORE_MAX_PAGES = 65536;

/**
 * May this thread block (Atomics.wait)? Everywhere but a browser's main thread. The core's
 * remote-TLB-flush wait sleeps instead of spinning when it may (1) or only spins (0).
 */
export const CAN_BLOCK: number = (() => {
  try {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
    return 1;
  } catch {
    return 0;
  }
})();

/**
 * The vcpu->mutex tag of the thread that owns the VM objects (assembly/vcpu.ts): every
 * thread that drives vCPUs has its own; vCPU workers get theirs from VcpuThread.
 */
export const HOST_TAG = L.VCPU_HOST_TAG;

/**
 * What `createVm({ wasm })` accepts for the core: the compiled module, its bytes (an
 * ArrayBuffer or a typed array / DataView over them) or its URL (a URL, or a string resolved
 * like fetch() resolves it: against the page or worker's location; in Node it must be
 * absolute, e.g. a file: URL).
 */
export type CoreSource = WebAssembly.Module | ArrayBuffer | ArrayBufferView | URL | string;

/** A CoreSource checked and normalized (see coreSource). */
export type CheckedCoreSource =
  | { module: WebAssembly.Module }
  | { bytes: ArrayBuffer | ArrayBufferView }
  | { url: URL };

let compiled: Promise<WebAssembly.Module> | undefined;
const byBytes = new WeakMap<object, Promise<WebAssembly.Module>>();
const byUrl = new Map<string, Promise<WebAssembly.Module>>();
/** Modules already found to be dirtlog cores. */
const checked = new WeakSet<WebAssembly.Module>();

/**
 * The compiled core (build/dirtlog.wasm), compiled once and cached (post it to workers;
 * never recompile). A failed load is not cached: the next call tries again.
 */
export function coreModule(): Promise<WebAssembly.Module> {
  return loadCore(undefined, "coreModule");
}

/**
 * Check `wasm` (createVm's option) synchronously, before anything is made: EINVAL naming
 * what is accepted otherwise.
 */
export function coreSource(wasm: unknown, call: string): CheckedCoreSource {
  if (wasm instanceof WebAssembly.Module) return { module: wasm };
  if (wasm instanceof ArrayBuffer || ArrayBuffer.isView(wasm)) {
    if (wasm.byteLength === 0) throw new KvmError("EINVAL", call, "wasm: the bytes are empty");
    return { bytes: wasm };
  }
  if (wasm instanceof URL) return { url: wasm };
  if (typeof wasm === "string") {
    const base = (globalThis as { location?: { href?: unknown } }).location?.href;
    try {
      return { url: typeof base === "string" ? new URL(wasm, base) : new URL(wasm) };
    } catch {
      throw new KvmError(
        "EINVAL",
        call,
        typeof base === "string"
          ? `wasm ${JSON.stringify(wasm)} is not a URL`
          : `wasm ${JSON.stringify(wasm)} is not a valid absolute URL (there is no page here to resolve a relative one against): pass e.g. new URL("./dirtlog.wasm", import.meta.url), or the bytes`,
      );
    }
  }
  throw new KvmError(
    "EINVAL",
    call,
    "wasm must be the core as a compiled WebAssembly.Module, its bytes (an ArrayBuffer or a typed array) or its URL (a URL or a string)",
  );
}

/**
 * The core from a checked source (or the package's own when undefined), compiled once per
 * Module, bytes object or URL and cached; then checked to be a dirtlog core. Failures are
 * KvmErrors of `call`: ENOENT (no such file, HTTP 404), EIO (unreadable; or the package's
 * own core is not a module), EINVAL (the given bytes or URL are not a dirtlog core).
 */
export async function loadCore(source: CheckedCoreSource | undefined, call: string): Promise<WebAssembly.Module> {
  let module: WebAssembly.Module;
  try {
    if (source === undefined) {
      compiled ??= cached(compileWasmAt(defaultCoreUrl()), () => {
        compiled = undefined;
      });
      module = await compiled;
    } else if ("module" in source) {
      module = source.module;
    } else if ("bytes" in source) {
      const key = source.bytes;
      let p = byBytes.get(key);
      if (!p) {
        p = cached(compileBytes(key), () => byBytes.delete(key));
        byBytes.set(key, p);
      }
      module = await p;
    } else {
      const key = source.url.href;
      let p = byUrl.get(key);
      if (!p) {
        p = cached(compileWasmAt(source.url), () => byUrl.delete(key));
        byUrl.set(key, p);
      }
      module = await p;
    }
  } catch (e) {
    throw loadError(e, source === undefined, call);
  }
  if (!checked.has(module)) {
    const missing = missingCoreParts(module);
    if (missing) {
      throw new KvmError(source === undefined ? "EIO" : "EINVAL", call, `wasm is not a dirtlog core: ${missing}`);
    }
    checked.add(module);
  }
  return module;
}

/** A promise that forgets itself (`forget`) when it rejects, so the next call retries. */
function cached<T>(p: Promise<T>, forget: () => void): Promise<T> {
  return p.catch((e) => {
    forget();
    throw e;
  });
}

async function compileBytes(bytes: ArrayBuffer | ArrayBufferView): Promise<WebAssembly.Module> {
  // WebAssembly.compile refuses views of shared memory: copy those
  const view = ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : bytes;
  const own = view instanceof Uint8Array && !(view.buffer instanceof ArrayBuffer) ? view.slice() : view;
  try {
    return await WebAssembly.compile(own as ArrayBuffer);
  } catch (e) {
    throw new WasmLoadError(
      "invalid",
      `the bytes are not a WebAssembly module: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}

const HINT =
  "dirtlog/dist expects the core at ../build/dirtlog.wasm; if a bundler or dev server moved the package's files, " +
  'hand it over: createVm({ wasm }) takes the module, its bytes or its URL (the file is exported as "dirtlog/dirtlog.wasm")';

/**
 * By name, not instanceof: "#platform" resolves through package.json to dist/, so a test
 * that imports src/ meets dist's copy of the class.
 */
function isWasmLoadError(e: unknown): e is WasmLoadError {
  return e instanceof Error && e.name === "WasmLoadError" && typeof (e as Partial<WasmLoadError>).failure === "string";
}

const VITE_HINT =
  'Vite\'s dependency pre-bundling moved dirtlog away from its files: add optimizeDeps: { exclude: ["dirtlog"] } to the Vite config (Vite 8 needs no such option)';

function loadError(e: unknown, own: boolean, call: string): unknown {
  if (!isWasmLoadError(e)) return e;
  const prefix = own ? "the core" : "wasm";
  // Vite 5-7's dev server pre-bundles dependencies into node_modules/.vite/deps/, away from
  // build/ (Vite 8's does not lose the file)
  const hint = !own ? "" : e.message.includes("/.vite/") ? `. ${HINT}; ${VITE_HINT}` : `. ${HINT}`;
  switch (e.failure) {
    case "missing":
      return new KvmError("ENOENT", call, `${prefix}: ${e.message}${hint}`);
    case "unreadable":
      return new KvmError("EIO", call, `${prefix}: ${e.message}`);
    case "invalid":
      return new KvmError(own ? "EIO" : "EINVAL", call, `${prefix}: ${e.message}${hint}`);
  }
}

/** The exports and import every dirtlog core has; what a module lacks of them, or undefined. */
function missingCoreParts(module: WebAssembly.Module): string | undefined {
  const exports = new Set(WebAssembly.Module.exports(module).map((d) => d.name));
  const lacking = ["kvm_vm_init", "kvm_vcpu_init", "kvm_run", "memslot_commit", "kvm_get_dirty_log"].filter(
    (n) => !exports.has(n),
  );
  if (lacking.length) return `it does not export ${lacking.join(", ")}`;
  const memory = WebAssembly.Module.imports(module).some(
    (d) => d.module === "env" && d.name === "memory" && d.kind === "memory",
  );
  if (!memory) return "it does not import its memory (env.memory)";
  return undefined;
}

/** Instantiate the core over a shared memory (one instance per thread). */
export async function instantiateCore(module: WebAssembly.Module, memory: WebAssembly.Memory): Promise<CoreExports> {
  // `abort` is imported by the debug build only: a failed assert throws out of the core
  const abort = (msg: number, file: number, line: number, column: number) => {
    throw new Error(`core assertion failed: ${coreString(memory, msg)} (${coreString(memory, file)}:${line}:${column})`);
  };
  const instance = await WebAssembly.instantiate(module, { env: { memory, abort } });
  return instance.exports as unknown as CoreExports;
}

/** An AssemblyScript string of the debug build's static data (UTF-16, byte length at ptr - 4). */
function coreString(memory: WebAssembly.Memory, ptr: number): string {
  if (!ptr) return "";
  const bytes = new Uint8Array(memory.buffer);
  const len = new DataView(memory.buffer).getUint32(ptr - 4, true);
  // decode a copy: TextDecoder refuses views of shared memory in browsers
  return new TextDecoder("utf-16le").decode(bytes.slice(ptr, ptr + len));
}
