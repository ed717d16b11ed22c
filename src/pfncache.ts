// KVM's caches for its own writes into guest memory, as host objects over records in the
// VM's shared memory (the core does the work: assembly/kvm_write.ts for gfn_to_hva_cache,
// assembly/pfncache.ts for gfn_to_pfn_cache; spec §6):
//
//   GfnToHvaCache  vm.createGfnToHvaCache(gpa, len): a gpa range of address space 0 → its
//                  host address, re-initialised when the memslots change; writeCached /
//                  readCached at an offset; every write marks its page(s) dirty
//   GfnToPfnCache  vm.createGfnToPfnCache({ vcpu? }) / vcpu.createGfnToPfnCache(gpa, len):
//                  one page, activated on a gpa or a bare host address, check / refresh /
//                  deactivate, invalidated by memslot changes and by the mmu notifier
//                  (vm.invalidateHostRange, copy-on-write); its lock is in the shared memory,
//                  so a cache is usable from any thread of the VM
//
// Whose write: with a vCPU (the `vcpu` option, or a cache made by vcpu.createGfnToPfnCache)
// the write is made in that vCPU's context — it takes vcpu->mutex (EBUSY while another
// thread drives the vCPU) and its mark goes to that vCPU's ring —; without one it is the
// VM's (no running vCPU: the bitmap, or on a ring VM without WITH_BITMAP a lost report,
// counted in vm.stats.noVcpuWarnings, as the kernel WARNs).
import { u32, u64 } from "./args.js";
import { CAN_BLOCK, type CoreExports, HOST_TAG } from "./core.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import type { Vcpu } from "./vcpu.js";
import type { Vm } from "./vm.js";

const INVALID_GPA = 0xffff_ffff_ffff_ffffn;

/** Bytes in, bytes out: a scratch region of the VM that host-thread calls copy through. */
function scratch(vm: Vm, bytes: number): number {
  return vm.hostScratch(bytes);
}

function dataArg(data: unknown, call: string): Uint8Array {
  if (!(data instanceof Uint8Array)) {
    throw new KvmError("EINVAL", call, `data must be a Uint8Array, got ${data === null ? "null" : typeof data}`);
  }
  return data;
}

function vcpuOf(vm: Vm, vcpu: unknown, call: string): Vcpu | undefined {
  if (vcpu === undefined) return undefined;
  if (typeof vcpu !== "object" || vcpu === null || (vcpu as Vcpu).vm !== vm) {
    throw new KvmError("EINVAL", call, "vcpu must be a vCPU of this VM");
  }
  return vcpu as Vcpu;
}

function busy(ret: number, vcpu: Vcpu | undefined, call: string, reason: string): never {
  if (ret === -16 && vcpu) throw new KvmError("EBUSY", call, `vCPU ${vcpu.id} is being driven by another thread`);
  throw KvmError.fromReturn(ret, call, reason);
}

/** gfn_to_hva_cache over [gpa, gpa + len) of address space 0 (kvm_gfn_to_hva_cache_init). */
export class GfnToHvaCache {
  /** Address of the GHC record in the VM's memory. */
  readonly addr: number;
  private readonly vm: Vm;
  private readonly core: CoreExports;

  /** @internal vm.createGfnToHvaCache */
  constructor(vm: Vm, core: CoreExports, addr: number) {
    this.vm = vm;
    this.core = core;
    this.addr = addr;
  }

  private view(): DataView {
    return new DataView(this.vm.memory.buffer);
  }
  get gpa(): bigint {
    return this.view().getBigUint64(this.addr + L.GHC_GPA, true);
  }
  get len(): number {
    return this.view().getUint32(this.addr + L.GHC_LEN, true);
  }
  /** The AS-0 memslot generation the cache was (re)initialised for. */
  get generation(): bigint {
    return this.view().getBigUint64(this.addr + L.GHC_GENERATION, true);
  }
  /** One page: the fast path (a memslot is cached); several: page by page through the slots. */
  get singlePage(): boolean {
    return this.view().getUint32(this.addr + L.GHC_MEMSLOT, true) !== 0;
  }

  /**
   * kvm_write_guest_offset_cached: `data` at `offset` of the range. EINVAL if it does not
   * fit in the range; EFAULT if the memslots changed and the range is no longer writable.
   */
  writeCached(data: Uint8Array, options: { offset?: number; vcpu?: Vcpu } = {}): void {
    const call = "kvm_write_guest_offset_cached";
    this.vm.checkAlive(call);
    const bytes = dataArg(data, call);
    const offset = u32(options.offset ?? 0, "offset", call);
    const vcpu = vcpuOf(this.vm, options.vcpu, call);
    const buf = scratch(this.vm, bytes.byteLength);
    this.vm.hostScratchBytes().set(bytes);
    const ret = this.core.kvm_write_guest_offset_cached(
      this.vm.addr,
      vcpu?.addr ?? 0,
      HOST_TAG,
      this.addr,
      buf,
      offset,
      bytes.byteLength,
      CAN_BLOCK,
    );
    if (ret < 0) busy(ret, vcpu, call, reasonOf(ret, offset, bytes.byteLength, this.len));
  }

  /** kvm_read_guest_offset_cached: `len` bytes at `offset` of the range. */
  readCached(len: number, options: { offset?: number } = {}): Uint8Array {
    const call = "kvm_read_guest_offset_cached";
    this.vm.checkAlive(call);
    const n = u32(len, "len", call);
    const offset = u32(options.offset ?? 0, "offset", call);
    const buf = scratch(this.vm, n);
    const ret = this.core.kvm_read_guest_offset_cached(this.vm.addr, this.addr, buf, offset, n);
    if (ret < 0) throw KvmError.fromReturn(ret, call, reasonOf(ret, offset, n, this.len));
    return this.vm.hostScratchBytes().slice(0, n);
  }
}

function reasonOf(ret: number, offset: number, len: number, cacheLen: number): string {
  if (ret === -22) return `offset ${offset} + len ${len} is beyond the cached ${cacheLen} bytes`;
  return "the cached range is no longer in a writable memslot";
}

/** gfn_to_pfn_cache: one page, gpa- or hva-based (kvm_gpc_*). */
export class GfnToPfnCache {
  /** Address of the GPC record in the VM's memory. */
  readonly addr: number;
  /** The vCPU whose context writes are made in (undefined: the VM's). */
  readonly vcpu: Vcpu | undefined;
  private readonly vm: Vm;
  private readonly core: CoreExports;

  /** @internal vm.createGfnToPfnCache */
  constructor(vm: Vm, core: CoreExports, addr: number, vcpu: Vcpu | undefined) {
    this.vm = vm;
    this.core = core;
    this.addr = addr;
    this.vcpu = vcpu;
    core.kvm_gpc_init(vm.addr, addr);
  }

  private view(): DataView {
    return new DataView(this.vm.memory.buffer);
  }
  get active(): boolean {
    return this.view().getUint32(this.addr + L.GPC_ACTIVE, true) !== 0;
  }
  /** The mapping may be used (until the next memslot change or host invalidation). */
  get valid(): boolean {
    return this.view().getUint32(this.addr + L.GPC_VALID, true) !== 0;
  }
  /** The cached gpa (undefined for an hva-based cache). */
  get gpa(): bigint | undefined {
    const g = this.view().getBigUint64(this.addr + L.GPC_GPA, true);
    return g === INVALID_GPA ? undefined : g;
  }
  /** The host (VMM) address cached (undefined before a successful resolution). */
  get uhva(): bigint | undefined {
    const h = this.view().getBigUint64(this.addr + L.GPC_UHVA, true);
    return h === INVALID_GPA ? undefined : h;
  }

  /** kvm_gpc_activate: cache the page of `gpa` (address space 0) for accesses of `len` bytes. */
  activate(gpa: number | bigint, len: number): void {
    const call = "kvm_gpc_activate";
    this.vm.checkAlive(call);
    const g = u64(gpa, "gpa", call);
    const n = u32(len, "len", call);
    const ret = this.core.kvm_gpc_activate(this.addr, g, n, CAN_BLOCK);
    if (ret < 0) throw KvmError.fromReturn(ret, call, activateReason(ret, g, n));
  }

  /** kvm_gpc_activate_hva: cache the page of a host address (a slot's `hva` + offset). */
  activateHva(uhva: number | bigint, len: number): void {
    const call = "kvm_gpc_activate_hva";
    this.vm.checkAlive(call);
    const h = u64(uhva, "uhva", call);
    const n = u32(len, "len", call);
    const ret = this.core.kvm_gpc_activate_hva(this.addr, h, n, CAN_BLOCK);
    if (ret < 0) {
      throw KvmError.fromReturn(ret, call, ret === -22 ? `${n} bytes from 0x${h.toString(16)} cross the page` : `no memslot's memory at 0x${h.toString(16)}`);
    }
  }

  /** kvm_gpc_check: may `len` bytes from the cached address be used without a refresh? */
  check(len: number): boolean {
    this.vm.checkAlive("kvm_gpc_check");
    return this.core.kvm_gpc_check_locked(this.addr, u32(len, "len", "kvm_gpc_check")) !== 0;
  }

  /** kvm_gpc_refresh: re-resolve the mapping (EINVAL: inactive or crossing the page; EFAULT: no slot). */
  refresh(len: number): void {
    const call = "kvm_gpc_refresh";
    this.vm.checkAlive(call);
    const n = u32(len, "len", call);
    const ret = this.core.kvm_gpc_refresh(this.addr, n, CAN_BLOCK);
    if (ret < 0) throw KvmError.fromReturn(ret, call, ret === -22 ? "the cache is inactive, or the access crosses the page" : "no memslot maps the cached address");
  }

  /** kvm_gpc_deactivate. */
  deactivate(): void {
    this.vm.checkAlive("kvm_gpc_deactivate");
    this.core.kvm_gpc_deactivate(this.addr);
  }

  /**
   * Write `data` at `offset` from the cached address with the usage protocol (lock, check,
   * refresh outside the lock, copy, mark dirty). `atomic: true` is atomic context: no
   * refresh, EAGAIN if the cache is invalid or its lock contended.
   */
  write(data: Uint8Array, options: { offset?: number; atomic?: boolean } = {}): void {
    this.access(dataArg(data, "gpc write"), options, true);
  }

  /** Read `len` bytes at `offset` from the cached address (same protocol, nothing marked). */
  read(len: number, options: { offset?: number; atomic?: boolean } = {}): Uint8Array {
    return this.access(new Uint8Array(u32(len, "len", "gpc read")), options, false);
  }

  private access(bytes: Uint8Array, options: { offset?: number; atomic?: boolean }, write: boolean): Uint8Array {
    const call = write ? "gpc write" : "gpc read";
    this.vm.checkAlive(call);
    const offset = u32(options.offset ?? 0, "offset", call);
    const buf = scratch(this.vm, bytes.byteLength);
    const mem = this.vm.hostScratchBytes();
    if (write) mem.set(bytes);
    const ret = this.core.kvm_gpc_access(
      this.addr,
      this.vcpu?.addr ?? 0,
      HOST_TAG,
      buf,
      offset,
      bytes.byteLength,
      write ? 1 : 0,
      options.atomic ? 1 : 0,
      CAN_BLOCK,
    );
    if (ret < 0) {
      const reason =
        ret === -11
          ? "atomic context: the cache is invalid or its lock is contended"
          : ret === -22
            ? `offset ${offset} + ${bytes.byteLength} bytes cross the page, or the cache is inactive`
            : "no memslot maps the cached address";
      busy(ret, this.vcpu, call, reason);
    }
    if (!write) bytes.set(mem.subarray(0, bytes.byteLength));
    return bytes;
  }
}

function activateReason(ret: number, gpa: bigint, len: number): string {
  if (ret === -22) return gpa === INVALID_GPA ? "gpa is INVALID_GPA" : `${len} bytes from gpa 0x${gpa.toString(16)} cross the page`;
  return `no memslot maps gpa 0x${gpa.toString(16)}`;
}
