// Loading the core: build/dirtlog.wasm is compiled once per process (or page) and the
// same WebAssembly.Module is instantiated over each VM's shared memory.

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
    canBlock: number,
  ): number;
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
export const HOST_TAG = 1;

let compiled: Promise<WebAssembly.Module> | undefined;

/** The compiled core, compiled once and cached (post it to workers; never recompile). */
export function coreModule(): Promise<WebAssembly.Module> {
  compiled ??= compileCore();
  return compiled;
}

/**
 * The debug build of the core (asserts on: mmu_lock and vcpu->mutex rules, see
 * assembly/mmu_lock.ts and assembly/vcpu.ts) is used when the environment variable
 * DIRTLOG_CORE=debug is set in Node; the test suite runs against both builds.
 */
function debugCore(): boolean {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  return env?.DIRTLOG_CORE === "debug";
}

async function compileCore(): Promise<WebAssembly.Module> {
  const url = debugCore()
    ? new URL("../build/dirtlog.debug.wasm", import.meta.url)
    : new URL("../build/dirtlog.wasm", import.meta.url);
  if (url.protocol === "file:") {
    const { readFile } = await import("node:fs/promises");
    return WebAssembly.compile(await readFile(url));
  }
  return WebAssembly.compileStreaming(fetch(url));
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
