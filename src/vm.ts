// Vm: the VM file descriptor's ioctls as synchronous methods over the core.
// All state lives in the VM's shared WebAssembly.Memory; this class only allocates
// regions, validates arguments and turns negative returns into KvmError.
//
// Invariants: a rejected call throws a KvmError and changes nothing (every argument is
// validated and every region allocated before the first change; the one exception is the
// kernel's own: a MOVE rejected by the arch check, see memslot_prepare). After dispose()
// every call throws EBADF; after a vCPU thread trapped inside the core (KVM_BUG_ON's
// kvm_vm_bugged) every call throws EIO.
//
// Memories are pooled: a disposed VM's memory, scrubbed back to zero, serves a later
// createVm (see `idle` below for why and for the pool's invariant).
import {
  APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
  APIC_DEFAULT_PHYS_BASE,
  IDENTITY_PAGETABLE_PRIVATE_MEMSLOT,
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_CAP_MULTI_ADDRESS_SPACE,
  KVM_CAP_NR_MEMSLOTS,
  KVM_CAP_READONLY_MEM,
  KVM_CAP_SET_IDENTITY_MAP_ADDR,
  KVM_CAP_SET_TSS_ADDR,
  KVM_CAP_USER_MEMORY,
  KVM_DIRTY_LOG_MANUAL_CAPS,
  KVM_DIRTY_GFN_SIZE,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_DIRTY_RING_MAX_ENTRIES,
  KVM_MAX_VCPU_IDS,
  KVM_MR_CREATE,
  KVM_MR_DELETE,
  KVM_MR_MOVE_REJECTED,
  KVM_USER_MEM_SLOTS,
  TSS_PRIVATE_MEMSLOT,
} from "./constants.js";
import { bool, int, known, object, oneOf, u32, u64 } from "./args.js";
import {
  CAN_BLOCK,
  CORE_MAX_PAGES,
  CORE_MIN_PAGES,
  type CoreExports,
  type CoreSource,
  HOST_TAG,
  coreSource,
  instantiateCore,
  loadCore,
} from "./core.js";
import { CORE_REASONS, KvmError, check } from "./errors.js";
import * as L from "./layout.js";
import { capabilities } from "./capabilities.js";
import { PAGE_TRACK_QUEUE_ENTRIES, PageTrack, type PageTrackNotifier, checkNotifier } from "./page_track.js";
import { GfnToHvaCache, GfnToPfnCache } from "./pfncache.js";
import { clockNs } from "./xen.js";
import { RegionAllocator, RegionBatch } from "./region.js";
import { Vcpu } from "./vcpu.js";

export interface VmOptions {
  /** Upper bound of the shared memory in bytes (≤ 4 GiB); backed slots live in it. */
  maxMemoryBytes?: number;
  /** Bytes reserved for TDP page tables (4 KiB each; 1 GiB mapped at 4K needs ~2 MiB). */
  mmuPoolBytes?: number;
  /** Model an in-kernel irqchip: the first vCPU installs the APIC access page slot. */
  irqchip?: boolean;
  /** Model Intel PML (page-modification logging): ring reserve 576, minimum ring 1024 entries. */
  pml?: boolean;
  /**
   * The MMU (default "tdp"): "tdp", KVM's TDP MMU over EPT; or "shadow", KVM's shadow MMU
   * (tdp_mmu=N, no EPT), which keeps rmaps from each gfn to its SPTEs and re-protects
   * through them: direct shadow pages for an unpaged guest (KVM's nonpaging mode), indirect
   * ones shadowing a paged guest's tables (vcpu.setPaging); 4K mappings only. PML needs
   * EPT: {mmu: "shadow", pml: true} is EINVAL.
   */
  mmu?: "tdp" | "shadow";
  /**
   * vCPUs cache writable translations (default true): a store through a cached entry
   * skips the SPTE walk until the vCPU handles a TLB flush request, as on hardware.
   */
  tlb?: boolean;
  /**
   * Where the vCPU worker script is (default: the package's dist/vcpu-worker.js, found with
   * `new URL("./vcpu-worker.js", import.meta.url)`), for bundlers and CSPs that place it
   * elsewhere. The package exports it as "dirtlog/vcpu-worker".
   */
  workerUrl?: string | URL;
  /**
   * The core to use instead of the package's build/dirtlog.wasm (found with
   * `new URL("../build/dirtlog.wasm", import.meta.url)`): the compiled WebAssembly.Module,
   * its bytes (an ArrayBuffer or a typed array), or its URL (a URL, or a string resolved
   * against the page's location; in Node an absolute URL). Bytes and URLs are compiled once
   * per object or URL and cached. The package exports the file as "dirtlog/dirtlog.wasm".
   */
  wasm?: CoreSource;
}

export interface UserMemoryRegion {
  /** as_id << 16 | id */
  slot: number;
  flags?: number;
  guestPhysAddr: number | bigint;
  /** Bytes; 0 deletes the slot. */
  memorySize: number | bigint;
  /** Backed: guest bytes live in the shared memory. Unbacked: tracking only. */
  backed?: boolean;
}

export interface MemslotInfo {
  /** as_id << 16 | id */
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  npages: number;
  backed: boolean;
  /**
   * userspace_addr: where the VMM maps the slot (a backed slot's bytes are at this address
   * of the VM's memory; an unbacked slot's is its gpa). Host addresses as pfn caches
   * (activateHva) and the mmu notifier see them.
   */
  userspaceAddr: bigint;
}

export interface VmStats {
  tlbFlushes: bigint;
  /** Pushes into a hard-full ring (the kernel's WARN_ON_ONCE). */
  ringFullWarnings: number;
  /** Dirtying on a ring VM without a running vCPU and without a bitmap (lost, kernel WARN). */
  noVcpuWarnings: number;
  zaps: bigint;
  hugeSplits: bigint;
  pageTablePages: number;
  memslotsDirtyLogging: number;
  /** mmu notifier invalidations (vm.invalidateHostRange, copy-on-write of host pages). */
  hostInvalidations: number;
  /** pfn caches those invalidations made invalid. */
  pfnCachesInvalidated: number;
  /** pfn-cache resolutions redone because an invalidation began or ended meanwhile (hva_to_pfn_retry). */
  pfnCacheRetries: number;
  /** Guest writes to write-tracked pages that KVM emulated. */
  emulatedWrites: bigint;
  /** Write-track counter updates refused at 0 or 65535 (the kernel's WARN_ON_ONCE, counted). */
  pageTrackWarnings: number;
  /** Emulated writes stopped because the page-track event queue was full (KVM_EXIT_PAGE_TRACK_FULL). */
  pageTrackFullExits: number;
  /** Shadow pages in use (kvm->arch.n_used_mmu_pages; 0 with the TDP MMU). */
  shadowPages: number;
  /** Shadow pages zapped so far (the kernel's mmu_shadow_zapped). */
  mmuShadowZapped: number;
  /** Shadow pages unsync now: guest leaf tables mapped writable until the guest's next TLB flush (mmu_unsync). */
  mmuUnsync: number;
  /**
   * dirtlog's own: times a long hold of mmu_lock for write (the shadow MMU's zap of
   * everything, its sync of unsync pages) let a waiting thread in between batches.
   */
  mmuLockBreaks: number;
}

interface SlotRegions {
  meta: number;
  metaBytes: number;
  /** Write-tracking counters (gfn_write_track + lpage disallow), 0 while tracking is off. */
  track?: number;
  trackBytes?: number;
  /** The shadow MMU's 4K rmap heads (8 bytes per page); none with the TDP MMU. */
  rmap?: number;
  rmapBytes?: number;
  backing: number;
  backingBytes: number;
  /** guestMemory() handed out a view: the backing may hold bytes the core never saw. */
  exposed?: boolean;
}

/** The VM's memslots; remembers every slot id ever created (see Vm.recycle). */
class SlotMap extends Map<number, SlotRegions> {
  readonly created = new Set<number>();
  override set(slot: number, regions: SlotRegions): this {
    this.created.add(slot);
    return super.set(slot, regions);
  }
}

const MIB = 1 << 20;
const GUARD = 65536;
const HUGE_2M = 2 * MIB;
const MAX_BYTES = CORE_MAX_PAGES * 65536;
const VM_OPTIONS = ["maxMemoryBytes", "mmuPoolBytes", "irqchip", "pml", "tlb", "mmu", "workerUrl", "wasm"];
const MMUS = { tdp: 0, shadow: 1 } as const;
/**
 * pte_list descriptors of a shadow-MMU VM (rmaps of aliased gfns, parent_ptes of shared
 * pages): 8 per page-table page of the pool, at least 4096. The kernel allocates them from
 * the slab; here the pool is fixed, and an rmap that once held two SPTEs keeps its
 * descriptor until it empties (during a zap of everything, a gfn faulted again is mapped
 * by its old and its new page for a while).
 */
const PTE_LIST_DESCS_PER_TABLE = 8;
const PTE_LIST_DESCS_MIN = 4096;
/** Idle memories kept per (core module, maximum size); more are left to the garbage collector. */
const MAX_IDLE = 4;

interface IdleMemory {
  memory: WebAssembly.Memory;
  /** The core instantiated over it on this thread (instances keep no state of their own). */
  core: CoreExports;
}

/**
 * Memories of disposed VMs, by core module and maximum pages, for createVm to reuse. V8
 * does not count shared WebAssembly memories as memory pressure, so a memory left to the
 * GC keeps every page it touched (2 MiB each under THP) until a collection the JS heap may
 * never ask for; a loop of createVm/dispose then grows without bound.
 *
 * Invariant: every byte of an idle memory from GUARD up is zero, and no thread (vCPU
 * worker) that could write it is still running. Vm.recycle keeps it: it runs only once
 * every vCPU thread of the VM has ended, scrubs what the VM may have written, and never
 * pools the memory of a bugged VM (its tables may be half-written).
 */
const idle = new WeakMap<WebAssembly.Module, Map<number, IdleMemory[]>>();
/** Memories createVm made, with their maximum in 64 KiB pages: only these are pooled. */
const poolable = new WeakMap<WebAssembly.Memory, number>();
const poolStats = { created: 0, reused: 0, recycled: 0, idle: 0 };

/**
 * @internal How many WebAssembly.Memory objects createVm has made and reused, how many
 * disposed VMs' memories were recycled, and how many are idle now (per process or page).
 */
export function memoryPoolStats(): { created: number; reused: number; recycled: number; idle: number } {
  return { ...poolStats };
}

/**
 * Only Node tells when a worker has really ended (Worker.terminate() resolves on its exit);
 * a browser's terminate() returns at once, so a VM disposed while a vCPU worker may still
 * run is left to the GC there (after close(), the workers were joined: it is recycled).
 */
const WORKER_EXIT_OBSERVABLE = typeof process !== "undefined" && typeof process.versions?.node === "string";

/** Create a VM (KVM_CREATE_VM). Options are validated before anything is made. */
export async function createVm(options: VmOptions = {}): Promise<Vm> {
  const call = "KVM_CREATE_VM";
  const o = object<VmOptions>(options, "options", call);
  for (const k of Object.keys(o)) {
    if (!VM_OPTIONS.includes(k)) throw new KvmError("EINVAL", call, `unknown option ${JSON.stringify(k)}`);
  }
  const maxBytes = o.maxMemoryBytes === undefined ? MAX_BYTES : int(o.maxMemoryBytes, "maxMemoryBytes", call, MIB, MAX_BYTES);
  if (o.mmuPoolBytes !== undefined) int(o.mmuPoolBytes, "mmuPoolBytes", call, 0, MAX_BYTES);
  for (const k of ["irqchip", "pml", "tlb"] as const) bool(o[k], k, call);
  if (o.mmu !== undefined) oneOf(o.mmu, MMUS, "mmu", call);
  if (o.mmu === "shadow" && o.pml) {
    throw new KvmError("EINVAL", call, "PML needs EPT: the shadow MMU (mmu: \"shadow\") cannot log with it");
  }
  if (o.workerUrl !== undefined && typeof o.workerUrl !== "string" && !(o.workerUrl instanceof URL)) {
    throw new KvmError("EINVAL", call, "workerUrl must be a string or a URL");
  }
  const wasm = o.wasm === undefined ? undefined : coreSource(o.wasm, call);
  const caps = capabilities();
  if (!caps.webAssembly || !caps.sharedMemory || !caps.atomics || !caps.bigint) {
    throw new KvmError("ENXIO", call, caps.problems.join(" "));
  }
  const module = await loadCore(wasm, call);
  const maximum = Math.max(CORE_MIN_PAGES, Math.floor(maxBytes / 65536));
  const reused = idle.get(module)?.get(maximum)?.pop();
  if (reused) {
    poolStats.idle--;
    poolStats.reused++;
    return new Vm(module, reused.memory, reused.core, o);
  }
  const memory = new WebAssembly.Memory({ initial: CORE_MIN_PAGES, maximum, shared: true });
  poolStats.created++;
  poolable.set(memory, maximum);
  const core = await instantiateCore(module, memory);
  return new Vm(module, memory, core, o);
}

export class Vm {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  /** Address of the VM control block in `memory`. */
  readonly addr: number;
  private readonly core: CoreExports;
  private readonly regions: RegionAllocator;
  private readonly slots = new SlotMap();
  /** Regions the VM keeps for life: the slot table, the sorted ids, the page-table pool, the vCPU table. */
  private readonly fixed: { slots: number; sorted: number; pool: number; vcpuTable: number };
  private readonly vcpus = new Map<number, Vcpu>();
  private readonly irqchip: boolean;
  private identityMapAddr: bigint | undefined;
  /** The VM models Intel PML. */
  readonly pml: boolean;
  /** The MMU in use: "tdp" (the default) or "shadow" (VmOptions.mmu). */
  readonly mmu: "tdp" | "shadow";
  /** @internal where vCPU workers load from (VmOptions.workerUrl). */
  readonly workerUrl: string | URL | undefined;
  private disposed = false;
  /** @internal Write tracking's notifiers and event queue (src/page_track.ts). */
  readonly pageTrack: PageTrack;
  /** Why the VM is dead (a vCPU thread trapped in the core), or undefined. */
  private bugged: string | undefined;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, core: CoreExports, options: VmOptions) {
    this.module = module;
    this.memory = memory;
    this.core = core;
    this.irqchip = options.irqchip ?? false;
    this.pml = options.pml ?? false;
    this.mmu = options.mmu ?? "tdp";
    this.workerUrl = options.workerUrl;
    const limit = Math.min(options.maxMemoryBytes ?? 4096 * MIB, CORE_MAX_PAGES * 65536);
    this.regions = new RegionAllocator(memory, GUARD, limit);
    const vm = this.regions.alloc(L.VM_SIZE, 4096);
    const slots = this.regions.alloc(L.SLOT_TABLE_ENTRIES * L.SLOT_SIZE, 64);
    const sorted = this.regions.alloc(L.SORTED_BYTES, 64);
    const poolPages = Math.max(8, Math.floor((options.mmuPoolBytes ?? 64 * MIB) / L.PAGE_SIZE));
    const pool = this.regions.alloc(poolPages * L.PAGE_SIZE, L.PAGE_SIZE);
    const vcpuTable = this.regions.alloc(KVM_MAX_VCPU_IDS * 4, 64);
    const pml = options.pml ? 1 : 0;
    const tlb = options.tlb === false ? 0 : 1;
    if (
      !vm ||
      !slots ||
      !sorted ||
      !pool ||
      !vcpuTable ||
      core.kvm_vm_init(vm, slots, sorted, pool, poolPages, vcpuTable, pml, tlb) < 0
    ) {
      throw new KvmError("ENOMEM", "KVM_CREATE_VM", "maxMemoryBytes cannot hold the VM's tables and page-table pool");
    }
    if (this.mmu === "shadow") {
      // the shadow MMU's pte_list descriptors and one kvm_mmu_page per page-table page
      const descs = Math.max(PTE_LIST_DESCS_MIN, poolPages * PTE_LIST_DESCS_PER_TABLE);
      const pteBytes = core.shadow_pte_pool_bytes(descs);
      const ptePool = this.regions.alloc(pteBytes, 64);
      const spTable = this.regions.alloc(poolPages * L.SP_SIZE, 64);
      const hash = this.regions.alloc(L.SP_HASH_BUCKETS * 4, 64);
      if (!ptePool || !spTable || !hash) {
        throw new KvmError("ENOMEM", "KVM_CREATE_VM", "maxMemoryBytes cannot hold the shadow MMU's page descriptors");
      }
      core.shadow_init(vm, ptePool, descs, spTable, hash);
    }
    this.addr = vm;
    this.fixed = { slots, sorted, pool, vcpuTable };
    // kvmclock starts with the VM (the Xen runstate times' clock)
    new DataView(this.memory.buffer).setBigUint64(vm + L.VM_KVMCLOCK_BASE, clockNs(), true);
    new DataView(this.memory.buffer).setUint32(vm + L.VM_OWNER_CAN_BLOCK, CAN_BLOCK, true);
    this.pageTrack = new PageTrack(memory, core, vm);
  }

  // ---- views ----
  /** Byte view of the whole shared memory (re-made after the memory grows). */
  u8(): Uint8Array {
    this.checkAlive("u8");
    return new Uint8Array(this.memory.buffer);
  }
  private view(): DataView {
    return new DataView(this.memory.buffer);
  }
  /** Throw EBADF after dispose(), EIO after the VM was marked bugged. */
  checkAlive(call: string): void {
    if (this.disposed) throw new KvmError("EBADF", call, "the VM has been disposed");
    if (this.bugged !== undefined) throw new KvmError("EIO", call, `the VM is dead: ${this.bugged}`);
  }

  /**
   * @internal kvm_vm_bugged: a vCPU thread trapped or was killed inside the core, which may
   * have been left mid-operation (a lock held, a table half-written). Every later call
   * throws EIO; close() and dispose() still work.
   */
  bug(reason: string): void {
    this.bugged ??= reason;
  }

  private slotAddr(slot: number, view = this.view()): number {
    const slots = view.getUint32(this.addr + L.VM_SLOTS, true);
    return slots + ((slot >>> 16) * 32768 + (slot & 0xffff)) * L.SLOT_SIZE;
  }

  /** The raw core exports (for benchmarks and workers that call the core directly). */
  get raw(): CoreExports {
    this.checkAlive("raw");
    return this.core;
  }

  // ---- KVM_CHECK_EXTENSION / KVM_ENABLE_CAP ----
  checkExtension(cap: number): number {
    const call = "KVM_CHECK_EXTENSION";
    this.checkAlive(call);
    switch (u32(cap, "cap", call)) {
      case KVM_CAP_USER_MEMORY:
      case KVM_CAP_SET_TSS_ADDR:
      case KVM_CAP_SET_IDENTITY_MAP_ADDR:
      case KVM_CAP_READONLY_MEM:
        return 1;
      case KVM_CAP_NR_MEMSLOTS:
        return KVM_USER_MEM_SLOTS;
      case KVM_CAP_MULTI_ADDRESS_SPACE:
        return L.KVM_NR_AS;
      case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2:
        return KVM_DIRTY_LOG_MANUAL_CAPS;
      case KVM_CAP_DIRTY_LOG_RING:
      case KVM_CAP_DIRTY_LOG_RING_ACQ_REL:
        return KVM_DIRTY_RING_MAX_ENTRIES * KVM_DIRTY_GFN_SIZE;
      case KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP:
        return 1; // the kernel offers it on arm64 only; dirtlog offers it on its x86 model
      default:
        return 0;
    }
  }

  enableCap(capArg: number, args: Array<number | bigint> = [], flagsArg = 0): void {
    this.checkAlive("KVM_ENABLE_CAP");
    const cap = u32(capArg, "cap", "KVM_ENABLE_CAP");
    const call = `KVM_ENABLE_CAP(${CAP_NAMES[cap] ?? cap})`;
    // struct kvm_enable_cap: __u32 cap, __u32 flags, __u64 args[4]
    if (!Array.isArray(args) || args.length > 4) throw new KvmError("EINVAL", call, "args must be an array of at most 4 u64");
    for (const [i, a] of args.entries()) u64(a, `args[${i}]`, call);
    const flags = u32(flagsArg, "flags", call);
    const arg0 = u64(args[0] ?? 0, "args[0]", call);
    switch (cap) {
      case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: {
        // INITIALLY_SET is allowed only together with ENABLE: values 0, 1, 3.
        const allowed =
          arg0 & BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
            ? BigInt(KVM_DIRTY_LOG_MANUAL_CAPS)
            : BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
        if (flags !== 0) throw new KvmError("EINVAL", call, `flags 0x${flags.toString(16)} must be 0`);
        if (arg0 & ~allowed) {
          throw new KvmError("EINVAL", call, `args[0] 0x${arg0.toString(16)} is not 0, ENABLE, or ENABLE | INITIALLY_SET`);
        }
        this.view().setUint32(this.addr + L.VM_MANUAL_PROTECT, Number(arg0), true);
        return;
      }
      case KVM_CAP_DIRTY_LOG_RING:
      case KVM_CAP_DIRTY_LOG_RING_ACQ_REL:
        // args[0] reaches the kernel's u32 `size` parameter truncated; flags are not checked
        check(this.core.kvm_enable_dirty_log_ring(this.addr, Number(arg0 & 0xffffffffn)), call, () =>
          this.ringSizeReason(Number(arg0 & 0xffffffffn)),
        );
        return;
      case KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP:
        check(this.core.kvm_enable_dirty_ring_with_bitmap(this.addr, flags), call, () =>
          this.dirtyRingSize === 0
            ? "the dirty ring must be enabled first"
            : flags !== 0
              ? "flags must be 0"
              : "must be enabled before the first memslot",
        );
        return;
      default:
        throw new KvmError("EINVAL", call, `capability ${cap} cannot be enabled on a VM`);
    }
  }

  /** Why kvm_vm_ioctl_enable_dirty_log_ring refused `bytes` (in its check order). */
  private ringSizeReason(bytes: number): string {
    const reserved = 64 + (this.pml ? 512 : 0);
    if (bytes === 0 || (bytes & (bytes - 1)) !== 0) return `size ${bytes} is not a power of two`;
    if (bytes < reserved * 16 || bytes < L.PAGE_SIZE) return `size ${bytes} is below ${Math.max(reserved * 16, 4096)} bytes`;
    if (bytes > KVM_DIRTY_RING_MAX_ENTRIES * KVM_DIRTY_GFN_SIZE) return `size ${bytes} is above the maximum`;
    if (this.dirtyRingSize !== 0) return "the dirty ring is already enabled";
    return "must be enabled before the first vCPU";
  }

  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled (GET copies; CLEAR re-arms). */
  get manualDirtyLogProtect(): boolean {
    this.checkAlive("manualDirtyLogProtect");
    return (this.view().getUint32(this.addr + L.VM_MANUAL_PROTECT, true) & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0;
  }

  /** Dirty ring size in bytes (0 = bitmap mode). */
  get dirtyRingSize(): number {
    this.checkAlive("dirtyRingSize");
    return this.view().getUint32(this.addr + L.VM_RING_SIZE, true);
  }

  /** KVM_RESET_DIRTY_RINGS: re-arm every harvested entry; returns the number reset. */
  resetDirtyRings(): number {
    const call = "KVM_RESET_DIRTY_RINGS";
    this.checkAlive(call);
    const n = check(this.core.kvm_reset_dirty_rings(this.addr, CAN_BLOCK), call, "the VM has no dirty ring");
    if (n > 0) for (const v of this.vcpus.values()) v.wake(); // vCPU loops waiting on a full ring
    return n;
  }

  /** The vCPUs in creation order. */
  get vcpuList(): Vcpu[] {
    this.checkAlive("vcpuList");
    return [...this.vcpus.values()];
  }

  // ---- memslots ----
  /** The words for the core's last ERR_* code. */
  private coreReason(): string {
    return CORE_REASONS[this.view().getUint32(this.addr + L.VM_ERR_REASON, true)] ?? "";
  }

  /** KVM_SET_USER_MEMORY_REGION. Size 0 deletes. */
  setUserMemoryRegion(region: UserMemoryRegion): void {
    const call = "KVM_SET_USER_MEMORY_REGION";
    this.checkAlive(call);
    const r = object<UserMemoryRegion>(region, "region", call, false);
    for (const k of Object.keys(r)) {
      if (!REGION_FIELDS.includes(k)) throw new KvmError("EINVAL", call, `unknown field ${JSON.stringify(k)}`);
    }
    const slot = u32(r.slot, "slot", call);
    const flags = r.flags === undefined ? 0 : u32(r.flags, "flags", call);
    const gpa = u64(r.guestPhysAddr, "guestPhysAddr", call);
    const size = u64(r.memorySize, "memorySize", call);
    const backed = bool(r.backed, "backed", call) ? 1 : 0;
    const change = check(this.core.memslot_prepare(this.addr, slot, flags, gpa, size, backed, 0), call, () =>
      this.coreReason(),
    );
    const regions = change === KVM_MR_CREATE ? this.allocSlotRegions(size, backed, call) : undefined;
    this.commitRegion(slot, flags, gpa, size, change, regions);
    if (change === KVM_MR_MOVE_REJECTED) throw new KvmError("EINVAL", call, this.coreReason());
  }

  /**
   * The regions a new slot needs: metadata (bitmaps, summary, host-present map) and, when
   * backed, its bytes — aligned to 2 MiB only when the slot can hold a 2 MiB mapping. All
   * or nothing (ENOMEM with nothing taken).
   */
  private allocSlotRegions(size: bigint, backed: number, call: string, batch?: RegionBatch): SlotRegions {
    const b = batch ?? new RegionBatch(this.regions, (what, bytes) => this.enomem(call, what, bytes));
    const metaBytes = Number(this.core.memslot_meta_bytes(size >> 12n));
    if (backed && size > BigInt(MAX_BYTES)) this.enomem(call, "guest memory", Number(size));
    const backingBytes = backed ? Number(size) : 0;
    const meta = b.alloc(metaBytes, 8, "memslot metadata");
    const backing = backed ? b.alloc(backingBytes, backingBytes >= HUGE_2M ? HUGE_2M : L.PAGE_SIZE, "guest memory") : 0;
    const track = this.allocTrackRegion(size >> 12n, b);
    const rmap = this.allocRmapRegion(size >> 12n, b);
    if (!batch) b.keep();
    return { meta, metaBytes, backing, backingBytes, ...track, ...rmap };
  }

  /** kvm_alloc_memslot_metadata's rmaps: a new slot's 4K rmap heads, on a shadow-MMU VM. */
  private allocRmapRegion(npages: bigint, batch: RegionBatch): { rmap?: number; rmapBytes?: number } {
    if (this.mmu !== "shadow") return {};
    const rmapBytes = Number(npages) * 8;
    return { rmap: batch.alloc(rmapBytes, 8, "rmaps"), rmapBytes };
  }

  /** kvm_page_track_create_memslot: a new slot's counters, when write tracking is on. */
  private allocTrackRegion(npages: bigint, batch: RegionBatch): { track?: number; trackBytes?: number } {
    if (!this.pageTrack.enabled) return {};
    const trackBytes = Number(this.core.page_track_bytes(npages));
    return { track: batch.alloc(trackBytes, 8, "write-tracking counters"), trackBytes };
  }

  private enomem(call: string, what: string, bytes: number): never {
    throw new KvmError("ENOMEM", call, `no room for ${bytes} bytes of ${what} in the VM's memory (maxMemoryBytes)`);
  }

  private commitRegion(
    slot: number,
    flags: number,
    gpa: bigint,
    size: bigint,
    change: number,
    regions: SlotRegions | undefined,
  ): void {
    const meta = regions?.meta ?? 0;
    const backing = regions?.backing ?? 0;
    if (change === KVM_MR_CREATE && regions) this.slots.set(slot, regions);
    // hva: the backing's address; unbacked slots behave as if the hva equals the gpa
    // (congruent at every size, like a hugetlbfs mapping).
    const hva = backing ? BigInt(backing) : gpa;
    const maxLevel = backing ? 2 : 3;
    const track = regions?.track ?? 0;
    const rmap = regions?.rmap ?? 0;
    // kvm_page_track_delete_slot is told of the slot as it was
    const deleted = change === KVM_MR_DELETE && this.pageTrack.count > 0 ? this.memslots().find((m) => m.slot === slot) : undefined;
    this.core.memslot_commit(this.addr, slot, flags, gpa, size, change, meta, backing, hva, maxLevel, track, rmap, CAN_BLOCK);
    if (change === KVM_MR_DELETE) {
      const r = this.slots.get(slot);
      this.slots.delete(slot);
      if (r) {
        this.regions.release(r.meta, r.metaBytes);
        if (r.backingBytes) this.regions.release(r.backing, r.backingBytes);
        if (r.track) this.regions.release(r.track, r.trackBytes ?? 0);
        if (r.rmap) this.regions.release(r.rmap, r.rmapBytes ?? 0);
      }
      // x86's commit of a DELETE: the notifiers hear of it (after the slot's write events)
      if (deleted) this.pageTrack.removeRegion(deleted.guestPhysAddr >> 12n, deleted.npages);
    }
  }

  /**
   * __x86_set_memory_region, checked: an internal slot (ids 32764..32766) of `pages` pages
   * in every address space. Every address space is checked before any changes (the kernel
   * could leave address space 0 updated when address space 1 fails).
   */
  private checkInternalRegion(id: number, gpa: bigint, pages: number, call: string): void {
    const size = BigInt(pages * L.PAGE_SIZE);
    if (this.slots.has(id)) throw new KvmError("EEXIST", call, `internal memslot ${id} already exists`);
    for (let as = 0; as < L.KVM_NR_AS; as++) {
      check(this.core.memslot_prepare(this.addr, (as << 16) | id, 0, gpa, size, 1, 1), call, () => this.coreReason());
    }
  }

  /** Create a checked internal slot in every address space over one backing (from `batch`). */
  private commitInternalRegion(id: number, gpa: bigint, pages: number, batch: RegionBatch): () => void {
    const size = BigInt(pages * L.PAGE_SIZE);
    const backingBytes = pages * L.PAGE_SIZE;
    const backing = batch.alloc(backingBytes, L.PAGE_SIZE, "internal memslot");
    const metas = Array.from({ length: L.KVM_NR_AS }, () => {
      const metaBytes = Number(this.core.memslot_meta_bytes(size >> 12n));
      return {
        meta: batch.alloc(metaBytes, 8, "memslot metadata"),
        metaBytes,
        ...this.allocTrackRegion(size >> 12n, batch),
        ...this.allocRmapRegion(size >> 12n, batch),
      };
    });
    return () => {
      for (let as = 0; as < L.KVM_NR_AS; as++) {
        // the backing is owned (and freed) by address space 0's entry
        const regions = { ...metas[as], backing, backingBytes: as === 0 ? backingBytes : 0 };
        this.commitRegion((as << 16) | id, 0, gpa, size, KVM_MR_CREATE, regions);
      }
    };
  }

  /** KVM_SET_TSS_ADDR: the 3-page TSS internal slot (id 32764) at addr. */
  setTssAddr(addr: number): void {
    const call = "KVM_SET_TSS_ADDR";
    this.checkAlive(call);
    const a = Number(u64(addr, "addr", call));
    if (a > 0x1_0000_0000 - 3 * L.PAGE_SIZE) {
      throw new KvmError("EINVAL", call, `addr 0x${a.toString(16)}: the TSS's 3 pages must lie below 4 GiB`);
    }
    this.checkInternalRegion(TSS_PRIVATE_MEMSLOT, BigInt(a), 3, call);
    const batch = new RegionBatch(this.regions, (what, bytes) => this.enomem(call, what, bytes));
    const commit = this.commitInternalRegion(TSS_PRIVATE_MEMSLOT, BigInt(a), 3, batch);
    batch.keep();
    commit();
    this.initRmodeTss();
  }

  /**
   * init_rmode_tss (vmx.c): KVM writes the real-mode TSS through the internal slot's host
   * mapping — zeroes, the I/O bitmap's offset (TSS_BASE_SIZE + TSS_REDIRECTION_SIZE = 0x88
   * at 0x66) and the bitmap's terminating 0xff (at RMODE_TSS_SIZE - 1 = 0x2088). Internal
   * slots are never logged; migration leaves them out (their content is constant).
   */
  private initRmodeTss(): void {
    const tss = new Uint8Array(3 * L.PAGE_SIZE);
    new DataView(tss.buffer).setUint16(0x66, 0x68 + 0x20, true);
    tss[0x68 + 0x20 + 0x2000] = 0xff;
    this.writeInternal(TSS_PRIVATE_MEMSLOT, tss);
  }

  /**
   * init_rmode_identity_map (vmx.c): 1024 4 MiB PSE page-directory entries mapping the low
   * 4 GiB one to one (present, RW, user, accessed, dirty, PSE).
   */
  private initRmodeIdentityMap(): void {
    const page = new Uint8Array(L.PAGE_SIZE);
    const v = new DataView(page.buffer);
    for (let i = 0; i < 1024; i++) v.setUint32(i * 4, ((i << 22) | 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80) >>> 0, true);
    this.writeInternal(IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, page);
  }

  /** KVM's __copy_to_user into an internal slot (address space 0 owns its one backing). */
  private writeInternal(id: number, bytes: Uint8Array): void {
    const r = this.slots.get(id);
    if (!r?.backing) return;
    this.core.memslot_host_touch(this.addr, id, 0n, BigInt(bytes.byteLength / L.PAGE_SIZE), CAN_BLOCK);
    this.u8().set(bytes, r.backing);
  }

  /**
   * KVM_SET_IDENTITY_MAP_ADDR: where the 1-page identity-map internal slot (id 32766) goes.
   * As on VMX without unrestricted guest, the slot itself is created with the first vCPU.
   * EINVAL once a vCPU exists.
   */
  setIdentityMapAddr(addr: number | bigint): void {
    const call = "KVM_SET_IDENTITY_MAP_ADDR";
    this.checkAlive(call);
    const a = u64(addr, "addr", call);
    if (this.vcpus.size > 0) throw new KvmError("EINVAL", call, "must be set before the first vCPU");
    this.identityMapAddr = a;
  }

  /** Slot id that maps gpa in address space asId, or undefined. */
  memslotAt(asId: number, gpa: number | bigint): number | undefined {
    const call = "memslotAt";
    this.checkAlive(call);
    const as = int(asId, "asId", call, 0, L.KVM_NR_AS - 1);
    const s = this.core.memslot_lookup(this.addr, as, u64(gpa, "gpa", call) >> 12n) >>> 0;
    if (!s) return undefined;
    const slots = this.view().getUint32(this.addr + L.VM_SLOTS, true);
    const idx = (s - slots) / L.SLOT_SIZE;
    return ((idx >> 15) << 16) | (idx & 0x7fff);
  }

  /** The memslots that exist (user and internal), in no particular order. */
  memslots(): MemslotInfo[] {
    this.checkAlive("memslots");
    const v = this.view();
    return [...this.slots.entries()].map(([slot, r]) => {
      const s = this.slotAddr(slot);
      return {
        slot,
        flags: v.getUint32(s + L.SLOT_FLAGS, true),
        guestPhysAddr: v.getBigUint64(s + L.SLOT_BASE_GFN, true) * 4096n,
        npages: Number(v.getBigUint64(s + L.SLOT_NPAGES, true)),
        backed: r.backing !== 0,
        userspaceAddr: v.getBigUint64(s + L.SLOT_HVA, true),
      };
    });
  }

  /** Guest bytes of a backed slot (a view into the shared memory), or undefined. */
  guestMemory(slot: number): Uint8Array | undefined {
    const call = "guestMemory";
    this.checkAlive(call);
    const id = u32(slot, "slot", call);
    const r = this.slots.get(id);
    if (!r?.backing) return undefined;
    r.exposed = true;
    const s = this.slotAddr(id);
    const npages = Number(this.view().getBigUint64(s + L.SLOT_NPAGES, true));
    return new Uint8Array(this.memory.buffer, r.backing, npages * L.PAGE_SIZE);
  }

  /**
   * The VMM writes guest memory through its own mapping (userspace_addr + offset): the
   * bytes land in a backed slot and the host pages now exist, so a later guest read fault
   * maps them writable (and, in a logged slot, reports them). KVM sees no write: nothing
   * is reported dirty by this call itself. `data` must be a Uint8Array (bytes, not elements).
   */
  writeUserMemory(slot: number, offset: number, data: Uint8Array): void {
    const call = "writeUserMemory";
    this.checkAlive(call);
    const id = u32(slot, "slot", call);
    const off = int(offset, "offset", call, 0, Number.MAX_SAFE_INTEGER);
    if (!(data instanceof Uint8Array)) {
      throw new KvmError("EINVAL", call, `data must be a Uint8Array of bytes, got ${data === null ? "null" : (data as object)?.constructor?.name ?? typeof data}`);
    }
    const r = this.slots.get(id);
    if (!r) throw new KvmError("EINVAL", call, `memslot ${id} does not exist`);
    const first = Math.floor(off / L.PAGE_SIZE);
    const last = Math.ceil((off + data.byteLength) / L.PAGE_SIZE);
    check(this.core.memslot_host_touch(this.addr, id, BigInt(first), BigInt(last - first), CAN_BLOCK), call, "the bytes reach beyond the slot");
    if (r.backing) this.u8().set(data, r.backing + off);
  }

  /**
   * kvm_write_guest: KVM itself (a device model, a PV clock, …) writes 8 bytes of guest
   * memory outside any vCPU context and marks the page dirty through mark_page_dirty_in_slot.
   * On a ring VM only KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP's bitmap can record it; without
   * one the report is lost (the kernel WARNs; counted in `stats.noVcpuWarnings`).
   */
  kvmWriteGuest(gpa: number | bigint, value: number | bigint): void {
    const call = "kvm_write_guest";
    this.checkAlive(call);
    const g = u64(gpa, "gpa", call);
    if (g & 7n) throw new KvmError("EINVAL", call, `gpa 0x${g.toString(16)} is not 8-byte aligned`);
    const v = u64(value, "value", call);
    check(this.core.kvm_write_guest(this.addr, 0, HOST_TAG, g, v, CAN_BLOCK), call, `no writable memslot maps gpa 0x${g.toString(16)}`);
  }

  /**
   * Fault injection for tests: with `skipTlbFlush`, the remote TLB flushes that follow
   * dirty-log write protection are counted but never requested, so vCPUs keep writing
   * through stale translations — the bug class the flush protocol prevents (the no-loss
   * test shows it losing pages). It never breaks progress.
   */
  setDebug(flags: { skipTlbFlush?: boolean }): void {
    const call = "setDebug";
    this.checkAlive(call);
    const o = object<{ skipTlbFlush?: boolean }>(flags, "flags", call, false);
    known(o, ["skipTlbFlush"], call);
    const skip = bool(o.skipTlbFlush, "skipTlbFlush", call);
    this.view().setUint32(this.addr + L.VM_DEBUG, skip ? L.VM_DEBUG_SKIP_TLB_FLUSH : 0, true);
  }

  /** The value guest workloads store (dirty_log_test's `iteration`). */
  get iteration(): bigint {
    this.checkAlive("iteration");
    return this.view().getBigUint64(this.addr + L.VM_ITERATION, true);
  }
  set iteration(value: bigint) {
    this.checkAlive("iteration");
    const v = u64(value, "iteration", "iteration");
    const i = new BigUint64Array(this.memory.buffer, this.addr + L.VM_ITERATION, 1);
    Atomics.store(i, 0, v);
  }

  /** Memslot generation of an address space (kvm_memslots(kvm, as)->generation). */
  generation(asId = 0): bigint {
    const call = "generation";
    this.checkAlive(call);
    const as = int(asId, "asId", call, 0, L.KVM_NR_AS - 1);
    return this.view().getBigUint64(this.addr + L.VM_GEN + as * 8, true);
  }

  // ---- dirty log ----
  /**
   * KVM_GET_DIRTY_LOG: ALIGN(npages, 64) / 8 bytes, bit p = page p (little-endian). With
   * `into` (at least that many bytes, else EFAULT before anything is taken) the log is
   * written there and a view of it returned — a collector that reuses its buffer, as a
   * VMM does, allocates nothing per harvest.
   */
  getDirtyLog(slot: number, into?: Uint8Array): Uint8Array {
    const call = "KVM_GET_DIRTY_LOG";
    this.checkAlive(call);
    const id = u32(slot, "slot", call);
    // one view for the whole call: everything it reads was allocated before the call, and a
    // SharedArrayBuffer is never detached when the memory grows
    const view = this.view();
    const n = this.bitmapBytes(id, view);
    // the user's buffer is checked before the bits are taken (the kernel finds out only
    // when copy_to_user fails, after the exchange: here nothing is lost on EFAULT)
    if (into !== undefined && (!(into instanceof Uint8Array) || into.byteLength < n)) {
      throw new KvmError("EFAULT", call, `into must be a Uint8Array of at least ${n} bytes`);
    }
    const count = check(this.core.kvm_get_dirty_log(this.addr, id, CAN_BLOCK), call, () => this.coreReason());
    const out = into ? into.subarray(0, n) : new Uint8Array(n);
    if (count === 0) return into ? out.fill(0) : out;
    // The scratch list names, in increasing order, the summary words (64 bitmap words =
    // 512 bytes each) that held bits; everything else of the source is zero (classic: the
    // second bitmap between calls) or may be read as it is (manual protect: the kernel
    // copies the whole live bitmap). So one copy of the span from the first to the last.
    const src = this.core.kvm_dirty_log_source(this.addr, id) >>> 0;
    const list = this.core.kvm_dirty_log_scratch(this.addr, id) >>> 0;
    const first = view.getUint32(list, true) * 512;
    const end = Math.min(n, view.getUint32(list + (count - 1) * 4, true) * 512 + 512);
    if (into) {
      out.fill(0, 0, first);
      out.fill(0, end);
    }
    out.set(new Uint8Array(view.buffer, src + first, end - first), first);
    this.core.kvm_dirty_log_done(this.addr, id, count);
    return out;
  }

  /** KVM_CLEAR_DIRTY_LOG: clear (and re-arm) the pages whose bits are set in `bitmap`. */
  clearDirtyLog(slot: number, firstPage: number | bigint, numPages: number | bigint, bitmap: Uint8Array): void {
    const call = "KVM_CLEAR_DIRTY_LOG";
    this.checkAlive(call);
    const id = u32(slot, "slot", call);
    const first = u64(firstPage, "firstPage", call);
    const num = BigInt(u32(numPages, "numPages", call)); // struct kvm_clear_dirty_log: __u32 num_pages
    check(this.core.kvm_clear_dirty_log_check(this.addr, id, first, num), call, () => this.coreReason());
    const n = Number(((num + 63n) / 64n) * 8n);
    if (!(bitmap instanceof Uint8Array) || bitmap.byteLength < n) {
      throw new KvmError("EFAULT", call, `bitmap must be a Uint8Array of at least ${n} bytes`);
    }
    const second = this.core.kvm_dirty_log_second(this.addr, id) >>> 0;
    this.u8().set(bitmap.subarray(0, n), second + Number(first / 8n));
    this.core.kvm_clear_dirty_log(this.addr, id, first, num, CAN_BLOCK);
  }

  /**
   * Bytes of a slot's dirty log (0 for an id outside the slot table: the core rejects it).
   * In numbers, not bigints, as GET pays it on every call: exact, npages < 2^52.
   */
  private bitmapBytes(slot: number, view: DataView): number {
    if (slot >>> 16 >= L.KVM_NR_AS || (slot & 0xffff) >= L.SLOT_TABLE_ENTRIES / L.KVM_NR_AS) return 0;
    const at = this.slotAddr(slot, view) + L.SLOT_NPAGES;
    const npages = view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
    return Math.ceil(npages / 64) * 8;
  }

  // ---- vCPUs ----
  /**
   * KVM_CREATE_VCPU. The first vCPU also creates the identity-map and APIC-access internal
   * slots where the VM needs them; everything is checked and allocated before any of it is
   * created, so a failure (EEXIST, ENOMEM) leaves the VM as it was.
   */
  createVcpu(id: number): Vcpu {
    const call = "KVM_CREATE_VCPU";
    this.checkAlive(call);
    int(id, "id", call, 0, KVM_MAX_VCPU_IDS - 1);
    if (this.vcpus.has(id)) throw new KvmError("EEXIST", call, `vCPU ${id} already exists`);
    // check: the internal slots the first vCPU brings
    const internal: Array<[number, bigint]> = [];
    if (this.vcpus.size === 0 && this.identityMapAddr !== undefined) {
      internal.push([IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, this.identityMapAddr]); // init_rmode_identity_map
    }
    if (this.vcpus.size === 0 && this.irqchip && !this.slots.has(APIC_ACCESS_PAGE_PRIVATE_MEMSLOT)) {
      internal.push([APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC_DEFAULT_PHYS_BASE)]); // kvm_alloc_apic_access_page
    }
    for (const [slot, gpa] of internal) this.checkInternalRegion(slot, gpa, 1, call);
    if (internal.length === 2 && internal[0][1] >> 12n === internal[1][1] >> 12n) {
      throw new KvmError("EEXIST", call, "the identity map page overlaps the APIC access page");
    }
    // allocate: all or nothing
    const batch = new RegionBatch(this.regions, (what, bytes) => this.enomem(call, what, bytes));
    const commits = internal.map(([slot, gpa]) => this.commitInternalRegion(slot, gpa, 1, batch));
    const ringBytes = this.dirtyRingSize;
    const addr = batch.alloc(L.VCPU_SIZE, 64, "the vCPU block");
    // the ring is mmapped by userspace at KVM_DIRTY_LOG_PAGE_OFFSET: page aligned
    const ring = ringBytes ? batch.alloc(ringBytes, L.PAGE_SIZE, "the dirty ring") : 0;
    const priv = ringBytes ? batch.alloc(ringBytes, 64, "the dirty ring's private copy") : 0;
    const pml = this.pml ? batch.alloc(L.PAGE_SIZE, L.PAGE_SIZE, "the PML buffer") : 0;
    const tlb = batch.alloc(L.TLB_ENTRIES * 8, 64, "the TLB");
    // userspace's collect buffer: u32 slot + f64 offset per ring entry (ring_reaper.ts)
    const collect = ringBytes ? batch.alloc((ringBytes / 16) * 12, 64, "the ring collector's buffer") : 0;
    batch.keep();
    // act
    for (const commit of commits) commit();
    if (internal.some(([slot]) => slot === IDENTITY_PAGETABLE_PRIVATE_MEMSLOT)) this.initRmodeIdentityMap();
    this.core.kvm_vcpu_init(this.addr, addr, id, ring, priv, pml, tlb);
    const vcpu = new Vcpu(this, this.core, addr, id, collect);
    this.vcpus.set(id, vcpu);
    return vcpu;
  }

  // ---- introspection ----
  get stats(): VmStats {
    this.checkAlive("stats");
    const v = this.view();
    return {
      tlbFlushes: v.getBigUint64(this.addr + L.VM_TLB_FLUSHES, true),
      ringFullWarnings: v.getUint32(this.addr + L.VM_RING_WARN, true),
      noVcpuWarnings: v.getUint32(this.addr + L.VM_NO_VCPU_WARN, true),
      zaps: v.getBigUint64(this.addr + L.VM_ZAPS, true),
      hugeSplits: v.getBigUint64(this.addr + L.VM_SPLITS, true),
      pageTablePages: v.getUint32(this.addr + L.VM_POOL_USED, true),
      memslotsDirtyLogging: v.getUint32(this.addr + L.VM_NR_LOGGING, true),
      hostInvalidations: v.getUint32(this.addr + L.VM_HOST_INVALIDATIONS, true),
      pfnCachesInvalidated: v.getUint32(this.addr + L.VM_NR_GPC_INVALIDATED, true),
      pfnCacheRetries: v.getUint32(this.addr + L.VM_GPC_RETRIES, true),
      emulatedWrites: v.getBigUint64(this.addr + L.VM_EMULATED_WRITES, true),
      pageTrackWarnings: v.getUint32(this.addr + L.VM_TRACK_WARN, true),
      pageTrackFullExits: v.getUint32(this.addr + L.VM_TRACK_FULL_EXITS, true),
      shadowPages: v.getUint32(this.addr + L.VM_SHADOW_PAGES, true),
      mmuShadowZapped: v.getUint32(this.addr + L.VM_MMU_SHADOW_ZAPPED, true),
      mmuUnsync: v.getUint32(this.addr + L.VM_MMU_UNSYNC, true),
      mmuLockBreaks: v.getUint32(this.addr + L.VM_MMU_LOCK_BREAKS, true),
    };
  }

  /** The leaf SPTE mapping gpa in address space asId and its level (0n / 0 if none). */
  spte(asId: number, gpa: number | bigint): { spte: bigint; level: number } {
    const call = "spte";
    this.checkAlive(call);
    const as = int(asId, "asId", call, 0, L.KVM_NR_AS - 1);
    const w = this.core.tdp_walk(this.addr, as, u64(gpa, "gpa", call) >> 12n) >>> 0;
    const spte = this.view().getBigUint64(w & ~7, true);
    return { spte, level: spte & (1n << 11n) ? w & 7 : 0 };
  }

  /**
   * How many 4K pages of [gpa, gpa + pages × 4096) in address space asId are mapped by a
   * leaf SPTE with any of `bits` set (e.g. W = 1n << 1n, D = 1n << 9n): after a final
   * harvest, a writable page of a logged slot is one dirtied without a report.
   */
  countSptes(asId: number, gpa: number | bigint, pages: number, bits: bigint): number {
    const call = "countSptes";
    this.checkAlive(call);
    const as = int(asId, "asId", call, 0, L.KVM_NR_AS - 1);
    const g = u64(gpa, "gpa", call);
    if (g % 4096n !== 0n) throw new KvmError("EINVAL", call, `gpa 0x${g.toString(16)} is not page-aligned`);
    const n = int(pages, "pages", call, 0, Number.MAX_SAFE_INTEGER);
    const b = u64(bits, "bits", call);
    return Number(this.core.tdp_count_bits(this.addr, as, g >> 12n, BigInt(n), b));
  }

  // ---- KVM's own accesses: caches and the mmu notifier ----

  /**
   * The host pages behind bytes [offset, offset + bytes) of a slot go away and come back
   * (swap-out and -in, page migration; the content is kept): the mmu notifier zaps every
   * SPTE mapping them, with a remote TLB flush, and invalidates every pfn cache on them,
   * in the kernel's order (invalidate-start count, then the zap under mmu_lock with the
   * range in progress, then the sequence number at the end; faults and cache refreshes
   * that race it retry). The guest's next access faults them back; a write is reported
   * again. EINVAL for a missing slot or a range beyond it.
   */
  invalidateHostRange(slot: number, offset: number, bytes: number): void {
    const call = "invalidateHostRange";
    this.checkAlive(call);
    const id = u32(slot, "slot", call);
    const off = int(offset, "offset", call, 0, Number.MAX_SAFE_INTEGER);
    const n = int(bytes, "bytes", call, 0, Number.MAX_SAFE_INTEGER);
    if (!this.slots.has(id)) throw new KvmError("EINVAL", call, `memslot ${id} does not exist`);
    const first = Math.floor(off / L.PAGE_SIZE);
    const end = Math.ceil((off + n) / L.PAGE_SIZE);
    check(
      this.core.kvm_mmu_notifier_invalidate_slot(this.addr, id, BigInt(first), BigInt(end - first), CAN_BLOCK),
      call,
      "the range reaches beyond the slot",
    );
  }

  // ---- write tracking (page track), the kernel's API for KVMGT-like users ----

  /**
   * kvm_page_track_register_notifier: from now on, every guest write to a write-tracked
   * page (writeTrackAddGfn) is emulated and reported to `notifier.trackWrite(gpa, bytes)`,
   * and deleting a memslot calls `notifier.trackRemoveRegion(gfn, nrPages)`. Notifiers run
   * on this thread (see src/page_track.ts for when). The first registration enables write
   * tracking: every memslot gets its u16 counters (ENOMEM, with nothing changed, if they
   * do not fit). While a notifier is registered, memslots cannot be moved (EINVAL, as
   * the kernel has it since KVMGT's MOVE fix). EEXIST if `notifier` is registered already.
   */
  registerPageTrackNotifier(notifier: PageTrackNotifier): void {
    const call = "kvm_page_track_register_notifier";
    this.checkAlive(call);
    const n = checkNotifier(notifier, call);
    if (this.pageTrack.has(n)) throw new KvmError("EEXIST", call, "this notifier is registered already");
    if (!this.pageTrack.enabled) this.enableWriteTracking(call);
    this.pageTrack.add(n);
  }

  /**
   * kvm_page_track_unregister_notifier: after the events already queued were delivered (to
   * it too), `notifier` hears nothing more. Write tracking stays enabled. EINVAL if it is
   * not registered.
   */
  unregisterPageTrackNotifier(notifier: PageTrackNotifier): void {
    const call = "kvm_page_track_unregister_notifier";
    this.checkAlive(call);
    if (!this.pageTrack.has(notifier)) throw new KvmError("EINVAL", call, "this notifier is not registered");
    this.pageTrack.remove(notifier);
  }

  /**
   * @internal mmu_first_shadow_root_alloc: a paged guest on the shadow MMU write-tracks its
   * page tables, so tracking is enabled before the first shadow root (as by a registration).
   */
  ensureWriteTracking(call: string): void {
    if (!this.pageTrack.enabled) this.enableWriteTracking(call);
  }

  /** Give every slot its counters and the VM its event queue, all or nothing, then enable. */
  private enableWriteTracking(call: string): void {
    const batch = new RegionBatch(this.regions, (what, bytes) => this.enomem(call, what, bytes));
    const queue = batch.alloc(PAGE_TRACK_QUEUE_ENTRIES * L.TRACK_EVENT_SIZE, 64, "the page-track event queue");
    const v = this.view();
    const given = [...this.slots].map(([slot, r]) => {
      const trackBytes = Number(this.core.page_track_bytes(v.getBigUint64(this.slotAddr(slot) + L.SLOT_NPAGES, true)));
      return { slot, r, track: batch.alloc(trackBytes, 8, "write-tracking counters"), trackBytes };
    });
    batch.keep();
    for (const { slot, r, track, trackBytes } of given) {
      r.track = track;
      r.trackBytes = trackBytes;
      this.core.kvm_page_track_alloc_slot(this.slotAddr(slot), track);
    }
    this.core.kvm_page_track_enable(this.addr, queue, PAGE_TRACK_QUEUE_ENTRIES);
  }

  /**
   * kvm_write_track_add_gfn: write-track gfn (its counter + 1). Its mappings lose W and
   * MMU-writable at once (with a TLB flush), it is mapped read-only from now on, and no huge
   * mapping covers it; guest writes to it are emulated. EINVAL when no memslot of address
   * space 0 holds gfn; ENXIO before any notifier was registered (tracking off). A counter
   * at 65535 stays there (counted in stats.pageTrackWarnings), as the kernel's WARN does.
   */
  writeTrackAddGfn(gfn: number | bigint): void {
    this.writeTrackUpdate(gfn, 1, "kvm_write_track_add_gfn");
  }

  /**
   * kvm_write_track_remove_gfn: the counter − 1 (at 0 it stays, with a warning). The
   * mappings stay read-only until the next fault, which maps the page writable again once
   * the counter is 0. Errors as writeTrackAddGfn.
   */
  writeTrackRemoveGfn(gfn: number | bigint): void {
    this.writeTrackUpdate(gfn, -1, "kvm_write_track_remove_gfn");
  }

  private writeTrackUpdate(gfn: number | bigint, delta: number, call: string): void {
    this.checkAlive(call);
    const g = u64(gfn, "gfn", call);
    check(this.core.kvm_write_track_update_gfn(this.addr, g, delta, CAN_BLOCK), call, () => this.coreReason());
  }

  /**
   * The length of gfn's 4K rmap in address space asId: how many SPTEs map it (the shadow
   * MMU). EINVAL on a TDP-MMU VM (no rmaps) or without a slot holding gfn.
   */
  rmapCount(asId: number, gfn: number | bigint): number {
    const call = "rmapCount";
    this.checkAlive(call);
    const as = int(asId, "asId", call, 0, L.KVM_NR_AS - 1);
    const g = u64(gfn, "gfn", call);
    if (this.mmu !== "shadow") throw new KvmError("EINVAL", call, "the TDP MMU keeps no rmaps");
    const n = this.core.kvm_rmap_count(this.addr, as, g);
    if (n < 0) throw new KvmError("EINVAL", call, `no memslot of address space ${as} holds gfn 0x${g.toString(16)}`);
    return n;
  }

  /** How many times gfn is write-tracked (0 with tracking off). EINVAL without a slot in address space 0. */
  writeTrackCount(gfn: number | bigint): number {
    const call = "writeTrackCount";
    this.checkAlive(call);
    const g = u64(gfn, "gfn", call);
    const n = this.core.gfn_write_track_count(this.addr, g);
    if (n < 0) throw new KvmError("EINVAL", call, CORE_REASONS[L.ERR_TRACK_SLOT]);
    return n;
  }

  /** @internal Deliver queued page-track events now (this thread); a no-op without notifiers. */
  deliverPageTrackEvents(): void {
    if (this.pageTrack.count > 0) this.pageTrack.drain();
  }

  /**
   * kvm_gfn_to_hva_cache_init: a cache of [gpa, gpa + len) in address space 0. EINVAL for
   * an empty range at a page start; EFAULT when a page of it is in no writable memslot.
   */
  createGfnToHvaCache(gpa: number | bigint, len: number): GfnToHvaCache {
    const call = "kvm_gfn_to_hva_cache_init";
    this.checkAlive(call);
    const g = u64(gpa, "gpa", call);
    const n = u32(len, "len", call);
    const addr = this.allocRegion(L.GHC_SIZE, 8, call);
    const ret = this.core.kvm_gfn_to_hva_cache_init(this.addr, addr, g, n);
    if (ret < 0) {
      this.releaseRegion(addr, L.GHC_SIZE);
      const reason = ret === -22 ? `gpa 0x${g.toString(16)} + ${n} bytes is an empty range` : `[0x${g.toString(16)}, +${n}) is not all in writable memslots`;
      throw KvmError.fromReturn(ret, call, reason);
    }
    return new GfnToHvaCache(this, this.core, addr);
  }

  /**
   * A gfn_to_pfn_cache (kvm_gpc_init), inactive: activate it on a gpa or a host address.
   * With `vcpu`, its accesses are made in that vCPU's context (its ring gets the marks).
   */
  createGfnToPfnCache(options: { vcpu?: Vcpu } = {}): GfnToPfnCache {
    const call = "kvm_gpc_init";
    this.checkAlive(call);
    object(options, "options", call);
    known(options, ["vcpu"], call);
    const vcpu = options.vcpu;
    if (vcpu !== undefined && (!(vcpu instanceof Vcpu) || vcpu.vm !== this)) {
      throw new KvmError("EINVAL", call, "vcpu must be a vCPU of this VM");
    }
    const addr = this.allocRegion(L.GPC_SIZE, 64, call);
    return new GfnToPfnCache(this, this.core, addr, vcpu);
  }

  private scratchAddr = 0;
  private scratchBytes = 0;
  private scratchView: Uint8Array = new Uint8Array(0);
  /** @internal A region the host thread's cache calls copy their bytes through. */
  hostScratch(bytes: number): number {
    if (bytes > this.scratchBytes) {
      const size = Math.max(4096, 2 ** Math.ceil(Math.log2(bytes)));
      const addr = this.allocRegion(size, 64, "scratch");
      if (this.scratchAddr) this.releaseRegion(this.scratchAddr, this.scratchBytes);
      this.scratchAddr = addr;
      this.scratchBytes = size;
      this.scratchView = new Uint8Array(this.memory.buffer, addr, size);
    }
    return this.scratchAddr;
  }
  /** @internal The scratch region as bytes (valid after hostScratch(n) for its first n). */
  hostScratchBytes(): Uint8Array {
    return this.scratchView;
  }

  /** @internal A zeroed region of the VM's memory (workload tables, collector scratch). */
  allocRegion(bytes: number, align = 64, call = "allocRegion"): number {
    this.checkAlive(call);
    const a = this.regions.alloc(bytes, align);
    if (!a) this.enomem(call, "tables", bytes);
    return a;
  }

  /** @internal */
  releaseRegion(addr: number, bytes: number): void {
    this.checkAlive("releaseRegion");
    this.regions.release(addr, bytes);
  }

  /** End every vCPU thread (each within a bounded wait), then dispose. */
  async close(): Promise<void> {
    if (this.disposed) return;
    await Promise.all([...this.vcpus.values()].map((v) => v.terminate()));
    this.dispose();
  }

  /**
   * Release the VM (vCPU threads are told to end; use close() to wait for them). Its memory
   * then serves a later createVm — at once after close(), else once the threads have
   * ended — so views of it (guestMemory(), u8(), dirtyRing, memory.buffer) must not be
   * used after dispose.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.pageTrack.stop();
    const vcpus = [...this.vcpus.values()];
    const slots = [...this.slots];
    const joined = vcpus.every((v) => v.joined);
    const ended = Promise.all(vcpus.map((v) => v.abandon()));
    this.slots.clear();
    this.vcpus.clear();
    if (joined) this.recycle(vcpus, slots);
    else if (WORKER_EXIT_OBSERVABLE) void ended.then(() => this.recycle(vcpus, slots));
  }

  /**
   * Zero what the VM may have written and put its memory in the idle pool (no vCPU thread
   * may run). Scrubbed are only extents that may be non-zero, so pages never touched stay
   * uncommitted: the page-table pool up to its bump index, the slot-table entries and
   * sorted-id prefixes of slots ever created, the vCPU table up to the vCPU count, the
   * core's private ring copies up to their push count, and backing pages whose host page
   * exists (host_present; the whole backing once guestMemory() exposed it). Every other
   * live region (VM and vCPU blocks, TLBs, PML buffers, the rings userspace writes, slot
   * metadata, workload tables) is scrubbed whole. Bytes written through u8() or
   * memory.buffer outside those are not tracked.
   */
  private recycle(vcpus: Vcpu[], slots: Array<[number, SlotRegions]>): void {
    const maximum = poolable.get(this.memory);
    if (maximum === undefined || this.bugged !== undefined) return;
    const v = this.view();
    const u32 = (a: number) => v.getUint32(a, true);
    const { slots: table, sorted, pool, vcpuTable } = this.fixed;
    const written = new Map<number, Array<[number, number]>>();
    const add = (region: number, start: number, end: number) => {
      const list = written.get(region);
      if (list) list.push([start, end]);
      else written.set(region, [[start, end]]);
    };
    add(pool, pool, pool + u32(this.addr + L.VM_POOL_NEXT) * L.PAGE_SIZE);
    add(vcpuTable, vcpuTable, vcpuTable + 4 * u32(this.addr + L.VM_NR_VCPUS));
    const perAs = new Array<number>(L.KVM_NR_AS).fill(0);
    add(table, table, table); // a VM without slots wrote none of its table
    for (const slot of this.slots.created) {
      const a = this.slotAddr(slot);
      add(table, a, a + L.SLOT_SIZE);
      perAs[slot >>> 16]++;
    }
    // removing a slot from the sorted ids leaves the old last entry behind, so the prefix
    // ever used is as long as the number of slots ever created in the address space
    for (const [as, n] of perAs.entries()) add(sorted, sorted + as * 65536, sorted + as * 65536 + 2 * n);
    for (const vcpu of vcpus) {
      // only pushes write the private copy (userspace may write anywhere on the shared ring)
      const priv = u32(vcpu.addr + L.VCPU_RING_PRIV);
      const entries = u32(vcpu.addr + L.VCPU_RING_ENTRIES);
      const pushes = v.getBigUint64(vcpu.addr + L.VCPU_RING_PUSHES, true);
      if (priv) add(priv, priv, priv + 16 * (pushes < BigInt(entries) ? Number(pushes) : entries));
    }
    // a backing is written only where its host page exists, through any slot that maps it
    // (an internal slot's backing is shared by its address spaces)
    const exposed = new Set(slots.filter(([, r]) => r.exposed).map(([, r]) => r.backing));
    for (const [slot, r] of slots) {
      if (!r.backing || exposed.has(r.backing)) continue;
      const present = this.core.memslot_host_present_map(this.addr, slot) >>> 0;
      const npages = Number(v.getBigUint64(this.slotAddr(slot) + L.SLOT_NPAGES, true));
      if (!written.has(r.backing)) written.set(r.backing, []);
      if (present) pagesPresent(this.memory, present, npages, r.backing, (s, e) => add(r.backing, s, e));
      else add(r.backing, r.backing, r.backing + npages * L.PAGE_SIZE); // cannot happen: scrub it all
    }
    this.regions.reset(written);
    const byMax = idle.get(this.module) ?? new Map<number, IdleMemory[]>();
    idle.set(this.module, byMax);
    const list = byMax.get(maximum) ?? [];
    byMax.set(maximum, list);
    poolStats.recycled++;
    if (list.length >= MAX_IDLE) return;
    list.push({ memory: this.memory, core: this.core });
    poolStats.idle++;
  }
}

/** Call `extent` with each run of present pages of a host-present bitmap, as bytes of the backing. */
function pagesPresent(
  memory: WebAssembly.Memory,
  bitmap: number,
  npages: number,
  backing: number,
  extent: (start: number, end: number) => void,
): void {
  const words = new Uint32Array(memory.buffer, bitmap, 2 * Math.ceil(npages / 64));
  let run = -1; // first page of the current run
  for (let w = 0; w < words.length; w++) {
    const bits = words[w];
    if (bits === (run < 0 ? 0 : 0xffffffff)) continue; // no change of state in these 32 pages
    for (let k = 0; k < 32; k++) {
      const p = w * 32 + k;
      const on = p < npages && ((bits >>> k) & 1) === 1;
      if (on && run < 0) run = p;
      else if (!on && run >= 0) {
        extent(backing + run * L.PAGE_SIZE, backing + p * L.PAGE_SIZE);
        run = -1;
      }
    }
  }
  if (run >= 0) extent(backing + run * L.PAGE_SIZE, backing + npages * L.PAGE_SIZE);
}

const REGION_FIELDS = ["slot", "flags", "guestPhysAddr", "memorySize", "backed"];

/** Capability names for error messages. */
const CAP_NAMES: Partial<Record<number, string>> = {
  [KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2]: "MANUAL_DIRTY_LOG_PROTECT2",
  [KVM_CAP_DIRTY_LOG_RING]: "DIRTY_LOG_RING",
  [KVM_CAP_DIRTY_LOG_RING_ACQ_REL]: "DIRTY_LOG_RING_ACQ_REL",
  [KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP]: "DIRTY_LOG_RING_WITH_BITMAP",
};
