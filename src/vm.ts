// Vm: the VM file descriptor's ioctls as synchronous methods over the core.
// All state lives in the VM's shared WebAssembly.Memory; this class only allocates
// regions, converts arguments and turns negative returns into KvmError.
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
import { CAN_BLOCK, CORE_MAX_PAGES, CORE_MIN_PAGES, type CoreExports, coreModule, instantiateCore } from "./core.js";
import { KvmError, check } from "./errors.js";
import * as L from "./layout.js";
import { RegionAllocator } from "./region.js";
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
   * vCPUs cache writable translations (default true): a store through a cached entry
   * skips the SPTE walk until the vCPU handles a TLB flush request, as on hardware.
   */
  tlb?: boolean;
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
}

interface SlotRegions {
  meta: number;
  metaBytes: number;
  backing: number;
  backingBytes: number;
}

const MIB = 1 << 20;
const GUARD = 65536;
const BACKING_ALIGN = 2 * MIB;

/** A u64 argument as the kernel would see it (negative numbers wrap, like C). */
export function u64(x: number | bigint, call: string): bigint {
  if (typeof x === "number" && !Number.isInteger(x)) throw new KvmError("EINVAL", call);
  return BigInt.asUintN(64, BigInt(x));
}

/** Create a VM (KVM_CREATE_VM). */
export async function createVm(options: VmOptions = {}): Promise<Vm> {
  const module = await coreModule();
  const maxBytes = Math.min(options.maxMemoryBytes ?? 4096 * MIB, CORE_MAX_PAGES * 65536);
  const maximum = Math.max(CORE_MIN_PAGES, Math.floor(maxBytes / 65536));
  const memory = new WebAssembly.Memory({ initial: CORE_MIN_PAGES, maximum, shared: true });
  const core = await instantiateCore(module, memory);
  return new Vm(module, memory, core, options);
}

export class Vm {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  /** Address of the VM control block in `memory`. */
  readonly addr: number;
  private readonly core: CoreExports;
  private readonly regions: RegionAllocator;
  private readonly slots = new Map<number, SlotRegions>();
  private readonly vcpus = new Map<number, Vcpu>();
  private readonly irqchip: boolean;
  private identityMapAddr: bigint | undefined;
  /** The VM models Intel PML. */
  readonly pml: boolean;
  private disposed = false;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, core: CoreExports, options: VmOptions) {
    this.module = module;
    this.memory = memory;
    this.core = core;
    this.irqchip = options.irqchip ?? false;
    this.pml = options.pml ?? false;
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
      throw new KvmError("ENOMEM", "KVM_CREATE_VM");
    }
    this.addr = vm;
  }

  // ---- views ----
  /** Byte view of the whole shared memory (re-made after the memory grows). */
  u8(): Uint8Array {
    return new Uint8Array(this.memory.buffer);
  }
  private view(): DataView {
    return new DataView(this.memory.buffer);
  }
  private slotAddr(slot: number): number {
    const slots = this.view().getUint32(this.addr + L.VM_SLOTS, true);
    return slots + ((slot >>> 16) * 32768 + (slot & 0xffff)) * L.SLOT_SIZE;
  }

  /** The raw core exports (for benchmarks and workers that call the core directly). */
  get raw(): CoreExports {
    return this.core;
  }

  // ---- KVM_CHECK_EXTENSION / KVM_ENABLE_CAP ----
  checkExtension(cap: number): number {
    switch (cap) {
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

  enableCap(cap: number, args: Array<number | bigint> = [], flags = 0): void {
    const call = "KVM_ENABLE_CAP";
    const arg0 = u64(args[0] ?? 0, call);
    switch (cap) {
      case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: {
        // INITIALLY_SET is allowed only together with ENABLE: values 0, 1, 3.
        const allowed =
          arg0 & BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
            ? BigInt(KVM_DIRTY_LOG_MANUAL_CAPS)
            : BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
        if (flags !== 0 || arg0 & ~allowed) throw new KvmError("EINVAL", call);
        this.view().setUint32(this.addr + L.VM_MANUAL_PROTECT, Number(arg0), true);
        return;
      }
      case KVM_CAP_DIRTY_LOG_RING:
      case KVM_CAP_DIRTY_LOG_RING_ACQ_REL:
        // args[0] reaches the kernel's u32 `size` parameter truncated; flags are not checked
        check(this.core.kvm_enable_dirty_log_ring(this.addr, Number(arg0 & 0xffffffffn)), call);
        return;
      case KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP:
        check(this.core.kvm_enable_dirty_ring_with_bitmap(this.addr, flags >>> 0), call);
        return;
      default:
        throw new KvmError("EINVAL", call);
    }
  }

  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled (GET copies; CLEAR re-arms). */
  get manualDirtyLogProtect(): boolean {
    return (this.view().getUint32(this.addr + L.VM_MANUAL_PROTECT, true) & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0;
  }

  /** Dirty ring size in bytes (0 = bitmap mode). */
  get dirtyRingSize(): number {
    return this.view().getUint32(this.addr + L.VM_RING_SIZE, true);
  }

  /** KVM_RESET_DIRTY_RINGS: re-arm every harvested entry; returns the number reset. */
  resetDirtyRings(): number {
    this.alive();
    const n = check(this.core.kvm_reset_dirty_rings(this.addr, CAN_BLOCK), "KVM_RESET_DIRTY_RINGS");
    if (n > 0) for (const v of this.vcpus.values()) v.wake(); // vCPU loops waiting on a full ring
    return n;
  }

  /** The vCPUs in creation order. */
  get vcpuList(): Vcpu[] {
    return [...this.vcpus.values()];
  }

  // ---- memslots ----
  /** KVM_SET_USER_MEMORY_REGION. Size 0 deletes. */
  setUserMemoryRegion(region: UserMemoryRegion): void {
    const call = "KVM_SET_USER_MEMORY_REGION";
    this.alive();
    const slot = region.slot >>> 0;
    const flags = (region.flags ?? 0) >>> 0;
    const gpa = u64(region.guestPhysAddr, call);
    const size = u64(region.memorySize, call);
    const backed = region.backed ? 1 : 0;
    const change = check(this.core.memslot_prepare(this.addr, slot, flags, gpa, size, backed, 0), call);
    this.commitRegion(slot, flags, gpa, size, backed, change, call);
    if (change === KVM_MR_MOVE_REJECTED) throw new KvmError("EINVAL", call);
  }

  private commitRegion(
    slot: number,
    flags: number,
    gpa: bigint,
    size: bigint,
    backed: number,
    change: number,
    call: string,
    shared?: number,
  ): void {
    let meta = 0;
    let backing = 0;
    if (change === KVM_MR_CREATE) {
      const metaBytes = Number(this.core.memslot_meta_bytes(size >> 12n));
      meta = this.regions.alloc(metaBytes, 8);
      if (!meta) throw new KvmError("ENOMEM", call);
      const backingBytes = backed ? Number(size) : 0;
      backing = shared ?? (backed ? this.regions.alloc(backingBytes, BACKING_ALIGN) : 0);
      if (backed && !backing) {
        this.regions.release(meta, metaBytes);
        throw new KvmError("ENOMEM", call);
      }
      this.slots.set(slot, { meta, metaBytes, backing, backingBytes: shared ? 0 : backingBytes });
    }
    // hva: the backing's address; unbacked slots behave as if the hva equals the gpa
    // (congruent at every size, like a hugetlbfs mapping).
    const hva = backing ? BigInt(backing) : gpa;
    const maxLevel = backing ? 2 : 3;
    this.core.memslot_commit(this.addr, slot, flags, gpa, size, change, meta, backing, hva, maxLevel, CAN_BLOCK);
    if (change === KVM_MR_DELETE) {
      const r = this.slots.get(slot);
      this.slots.delete(slot);
      if (r) {
        this.regions.release(r.meta, r.metaBytes);
        if (r.backingBytes) this.regions.release(r.backing, r.backingBytes);
      }
    }
  }

  /**
   * __x86_set_memory_region: an internal slot (ids 32764..32766) of `pages` pages in every
   * address space, sharing one backing. All address spaces are checked before any changes
   * (the kernel could leave address space 0 updated when address space 1 fails).
   */
  private setInternalRegion(id: number, gpa: bigint, pages: number, call: string): void {
    const size = BigInt(pages * L.PAGE_SIZE);
    if (this.slots.has(id)) throw new KvmError("EEXIST", call);
    for (let as = 0; as < L.KVM_NR_AS; as++) {
      check(this.core.memslot_prepare(this.addr, (as << 16) | id, 0, gpa, size, 1, 1), call);
    }
    const backing = this.regions.alloc(pages * L.PAGE_SIZE, L.PAGE_SIZE);
    if (!backing) throw new KvmError("ENOMEM", call);
    for (let as = 0; as < L.KVM_NR_AS; as++) {
      this.commitRegion((as << 16) | id, 0, gpa, size, 1, KVM_MR_CREATE, call, backing);
    }
  }

  /** KVM_SET_TSS_ADDR: the 3-page TSS internal slot (id 32764) at addr. */
  setTssAddr(addr: number): void {
    const call = "KVM_SET_TSS_ADDR";
    if (!Number.isInteger(addr) || addr < 0 || addr > 0x1_0000_0000 - 3 * L.PAGE_SIZE) {
      throw new KvmError("EINVAL", call);
    }
    this.setInternalRegion(TSS_PRIVATE_MEMSLOT, BigInt(addr), 3, call);
  }

  /**
   * KVM_SET_IDENTITY_MAP_ADDR: where the 1-page identity-map internal slot (id 32766) goes.
   * As on VMX without unrestricted guest, the slot itself is created with the first vCPU.
   * EINVAL once a vCPU exists.
   */
  setIdentityMapAddr(addr: number | bigint): void {
    const call = "KVM_SET_IDENTITY_MAP_ADDR";
    const a = u64(addr, call);
    if (this.vcpus.size > 0) throw new KvmError("EINVAL", call);
    this.identityMapAddr = a;
  }

  /** Slot id that maps gpa in address space asId, or undefined. */
  memslotAt(asId: number, gpa: number | bigint): number | undefined {
    const s = this.core.memslot_lookup(this.addr, asId, u64(gpa, "lookup") >> 12n) >>> 0;
    if (!s) return undefined;
    const slots = this.view().getUint32(this.addr + L.VM_SLOTS, true);
    const idx = (s - slots) / L.SLOT_SIZE;
    return ((idx >> 15) << 16) | (idx & 0x7fff);
  }

  /** The memslots that exist (user and internal), in no particular order. */
  memslots(): MemslotInfo[] {
    const v = this.view();
    return [...this.slots.entries()].map(([slot, r]) => {
      const s = this.slotAddr(slot);
      return {
        slot,
        flags: v.getUint32(s + L.SLOT_FLAGS, true),
        guestPhysAddr: v.getBigUint64(s + L.SLOT_BASE_GFN, true) * 4096n,
        npages: Number(v.getBigUint64(s + L.SLOT_NPAGES, true)),
        backed: r.backing !== 0,
      };
    });
  }

  /** Guest bytes of a backed slot (a view into the shared memory), or undefined. */
  guestMemory(slot: number): Uint8Array | undefined {
    const r = this.slots.get(slot >>> 0);
    if (!r?.backing) return undefined;
    const s = this.slotAddr(slot >>> 0);
    const npages = Number(this.view().getBigUint64(s + L.SLOT_NPAGES, true));
    return new Uint8Array(this.memory.buffer, r.backing, npages * L.PAGE_SIZE);
  }

  /**
   * The VMM writes guest memory through its own mapping (userspace_addr + offset): the
   * bytes land in a backed slot and the host pages now exist, so a later guest read fault
   * maps them writable (and, in a logged slot, reports them). KVM sees no write: nothing
   * is reported dirty by this call itself.
   */
  writeUserMemory(slot: number, offset: number, data: Uint8Array): void {
    const call = "writeUserMemory";
    slot >>>= 0;
    const r = this.slots.get(slot);
    if (!r || !Number.isInteger(offset) || offset < 0) throw new KvmError("EINVAL", call);
    const first = Math.floor(offset / L.PAGE_SIZE);
    const last = Math.ceil((offset + data.byteLength) / L.PAGE_SIZE);
    check(this.core.memslot_host_touch(this.addr, slot, BigInt(first), BigInt(last - first)), call);
    if (r.backing) this.u8().set(data, r.backing + offset);
  }

  /**
   * kvm_write_guest: KVM itself (a device model, a PV clock, …) writes 8 bytes of guest
   * memory outside any vCPU context and marks the page dirty through mark_page_dirty_in_slot.
   * On a ring VM only KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP's bitmap can record it; without
   * one the report is lost (the kernel WARNs; counted in `stats.noVcpuWarnings`).
   */
  kvmWriteGuest(gpa: number | bigint, value: number | bigint): void {
    const call = "kvm_write_guest";
    const g = u64(gpa, call);
    if (g & 7n) throw new KvmError("EINVAL", call);
    check(this.core.kvm_write_guest(this.addr, 0, g, BigInt.asUintN(64, BigInt(value))), call);
  }

  /**
   * Fault injection for tests: with `skipTlbFlush`, remote TLB flushes are counted but
   * never requested, so vCPUs keep writing through stale translations — the bug class the
   * flush protocol prevents (the no-loss test shows it losing pages).
   */
  setDebug(flags: { skipTlbFlush?: boolean }): void {
    this.view().setUint32(this.addr + L.VM_DEBUG, flags.skipTlbFlush ? L.VM_DEBUG_SKIP_TLB_FLUSH : 0, true);
  }

  /** The value guest workloads store (dirty_log_test's `iteration`). */
  get iteration(): bigint {
    return this.view().getBigUint64(this.addr + L.VM_ITERATION, true);
  }
  set iteration(value: bigint) {
    const i = new BigUint64Array(this.memory.buffer, this.addr + L.VM_ITERATION, 1);
    Atomics.store(i, 0, BigInt.asUintN(64, value));
  }

  /** Memslot generation of an address space (kvm_memslots(kvm, as)->generation). */
  generation(asId = 0): bigint {
    return this.view().getBigUint64(this.addr + L.VM_GEN + asId * 8, true);
  }

  // ---- dirty log ----
  /** KVM_GET_DIRTY_LOG: ALIGN(npages, 64) / 8 bytes, bit p = page p (little-endian). */
  getDirtyLog(slot: number): Uint8Array {
    this.alive();
    slot >>>= 0;
    const count = check(this.core.kvm_get_dirty_log(this.addr, slot, CAN_BLOCK), "KVM_GET_DIRTY_LOG");
    const n = this.bitmapBytes(slot);
    const out = new Uint8Array(n);
    if (count > 0) {
      const u8 = this.u8();
      const src = this.core.kvm_dirty_log_source(this.addr, slot) >>> 0;
      const list = new Uint32Array(this.memory.buffer, this.core.kvm_dirty_log_scratch(this.addr, slot) >>> 0, count);
      for (let k = 0; k < count; k++) {
        // each summary word covers 64 bitmap words = 512 bytes
        const at = list[k] * 512;
        const end = Math.min(n, at + 512);
        out.set(u8.subarray(src + at, src + end), at);
      }
      this.core.kvm_dirty_log_done(this.addr, slot, count);
    }
    return out;
  }

  /** KVM_CLEAR_DIRTY_LOG: clear (and re-arm) the pages whose bits are set in `bitmap`. */
  clearDirtyLog(slot: number, firstPage: number | bigint, numPages: number | bigint, bitmap: Uint8Array): void {
    const call = "KVM_CLEAR_DIRTY_LOG";
    this.alive();
    slot >>>= 0;
    const first = u64(firstPage, call);
    const num = BigInt.asUintN(32, u64(numPages, call)); // num_pages is a u32 field
    check(this.core.kvm_clear_dirty_log_check(this.addr, slot, first, num), call);
    const n = Number(((num + 63n) / 64n) * 8n);
    if (!(bitmap instanceof Uint8Array) || bitmap.byteLength < n) throw new KvmError("EFAULT", call);
    const second = this.core.kvm_dirty_log_second(this.addr, slot) >>> 0;
    this.u8().set(bitmap.subarray(0, n), second + Number(first / 8n));
    this.core.kvm_clear_dirty_log(this.addr, slot, first, num, CAN_BLOCK);
  }

  private bitmapBytes(slot: number): number {
    const npages = this.view().getBigUint64(this.slotAddr(slot) + L.SLOT_NPAGES, true);
    return Number(((npages + 63n) / 64n) * 8n);
  }

  // ---- vCPUs ----
  /** KVM_CREATE_VCPU. */
  createVcpu(id: number): Vcpu {
    const call = "KVM_CREATE_VCPU";
    this.alive();
    if (!Number.isInteger(id) || id < 0 || id >= KVM_MAX_VCPU_IDS) throw new KvmError("EINVAL", call);
    if (this.vcpus.has(id)) throw new KvmError("EEXIST", call);
    if (this.vcpus.size === 0 && this.identityMapAddr !== undefined) {
      // init_rmode_identity_map, on the first vCPU
      this.setInternalRegion(IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, this.identityMapAddr, 1, call);
    }
    if (this.vcpus.size === 0 && this.irqchip && !this.slots.has(APIC_ACCESS_PAGE_PRIVATE_MEMSLOT)) {
      // kvm_alloc_apic_access_page
      this.setInternalRegion(APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC_DEFAULT_PHYS_BASE), 1, call);
    }
    const ringBytes = this.dirtyRingSize;
    const addr = this.regions.alloc(L.VCPU_SIZE, 64);
    // the ring is mmapped by userspace at KVM_DIRTY_LOG_PAGE_OFFSET: page aligned
    const ring = ringBytes ? this.regions.alloc(ringBytes, L.PAGE_SIZE) : 0;
    const priv = ringBytes ? this.regions.alloc(ringBytes, 64) : 0;
    const pml = this.pml ? this.regions.alloc(L.PAGE_SIZE, L.PAGE_SIZE) : 0;
    const tlb = this.regions.alloc(L.TLB_ENTRIES * 8, 64);
    if (!addr || !tlb || (ringBytes && (!ring || !priv)) || (this.pml && !pml)) throw new KvmError("ENOMEM", call);
    this.core.kvm_vcpu_init(this.addr, addr, id, ring, priv, pml, tlb);
    const vcpu = new Vcpu(this, this.core, addr, id);
    this.vcpus.set(id, vcpu);
    return vcpu;
  }

  // ---- introspection ----
  get stats(): VmStats {
    const v = this.view();
    return {
      tlbFlushes: v.getBigUint64(this.addr + L.VM_TLB_FLUSHES, true),
      ringFullWarnings: v.getUint32(this.addr + L.VM_RING_WARN, true),
      noVcpuWarnings: v.getUint32(this.addr + L.VM_NO_VCPU_WARN, true),
      zaps: v.getBigUint64(this.addr + L.VM_ZAPS, true),
      hugeSplits: v.getBigUint64(this.addr + L.VM_SPLITS, true),
      pageTablePages: v.getUint32(this.addr + L.VM_POOL_USED, true),
      memslotsDirtyLogging: v.getUint32(this.addr + L.VM_NR_LOGGING, true),
    };
  }

  /** The leaf SPTE mapping gpa in address space asId and its level (0n / 0 if none). */
  spte(asId: number, gpa: number | bigint): { spte: bigint; level: number } {
    const w = this.core.tdp_walk(this.addr, asId, u64(gpa, "spte") >> 12n) >>> 0;
    const spte = this.view().getBigUint64(w & ~7, true);
    return { spte, level: spte & (1n << 11n) ? w & 7 : 0 };
  }

  /** @internal A zeroed region of the VM's memory (workload tables). */
  allocRegion(bytes: number, align = 64): number {
    const a = this.regions.alloc(bytes, align);
    if (!a) throw new KvmError("ENOMEM", "allocRegion");
    return a;
  }

  /** @internal */
  releaseRegion(addr: number, bytes: number): void {
    this.regions.release(addr, bytes);
  }

  /** End every vCPU thread, then dispose. */
  async close(): Promise<void> {
    await Promise.all([...this.vcpus.values()].map((v) => v.terminate()));
    this.dispose();
  }

  /** Release the VM (vCPU threads are told to end; use close() to wait for them). */
  dispose(): void {
    for (const v of this.vcpus.values()) void v.terminate();
    this.disposed = true;
    this.slots.clear();
    this.vcpus.clear();
  }

  private alive(): void {
    if (this.disposed) throw new KvmError("EBADF", "vm disposed");
  }
}
