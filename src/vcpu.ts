// Vcpu: a vCPU file descriptor. In this release a vCPU runs on the calling thread:
// writeGuest/readGuest perform one guest access through the MMU (fault.ts in the core).
import type { CoreExports } from "./core.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import { VcpuThread } from "./vcpu-thread.js";
import type { Vm } from "./vm.js";
import { type Workload, writeWorkload } from "./workload.js";

export interface VcpuStats {
  stores: bigint;
  fastFaults: bigint;
  slowFaults: bigint;
  /** Entries pushed into this vCPU's dirty ring. */
  ringPushes: bigint;
  /** KVM_EXIT_DIRTY_RING_FULL exits taken. */
  ringFullExits: bigint;
  /** PML-full exits taken. */
  pmlFullExits: bigint;
  /** TLB flush requests this vCPU has served. */
  tlbFlushes: bigint;
}

/** The kernel-private ring indices (struct kvm_dirty_ring), for tests and tools. */
export interface DirtyRingState {
  entries: number;
  softLimit: number;
  dirtyIndex: number;
  resetIndex: number;
}

export class Vcpu {
  readonly id: number;
  /** Address of this vCPU's block in the VM's shared memory. */
  readonly addr: number;
  /**
   * The dirty ring as userspace sees it through the mmap at KVM_DIRTY_LOG_PAGE_OFFSET:
   * exactly `entries × 16` bytes of struct kvm_dirty_gfn (u32 flags @0, u32 slot @4,
   * u64 offset @8), over the shared memory. Empty when the VM has no ring.
   */
  readonly dirtyRing: Uint8Array;
  /** The VM this vCPU belongs to. */
  readonly vm: Vm;
  private readonly core: CoreExports;
  private thread: VcpuThread | undefined;
  private starting: Promise<void> | undefined;

  constructor(vm: Vm, core: CoreExports, addr: number, id: number) {
    this.vm = vm;
    this.core = core;
    this.addr = addr;
    this.id = id;
    const v = this.view();
    const ring = v.getUint32(addr + L.VCPU_RING, true);
    const entries = v.getUint32(addr + L.VCPU_RING_ENTRIES, true);
    // A SharedArrayBuffer is never detached when the memory grows: this view stays valid.
    this.dirtyRing = new Uint8Array(vm.memory.buffer, ring, ring ? entries * 16 : 0);
  }

  /** The ring's kernel-side indices (free-running u32 counters). */
  get dirtyRingState(): DirtyRingState {
    const v = this.view();
    return {
      entries: v.getUint32(this.addr + L.VCPU_RING_ENTRIES, true),
      softLimit: v.getUint32(this.addr + L.VCPU_RING_SOFT_LIMIT, true),
      dirtyIndex: v.getUint32(this.addr + L.VCPU_DIRTY_INDEX, true),
      resetIndex: v.getUint32(this.addr + L.VCPU_RESET_INDEX, true),
    };
  }

  /**
   * One 8-byte guest store at gpa (8-aligned). Returns 0 when the store retired, or the
   * exit reason: KVM_EXIT_MMIO for no slot or a read-only slot, KVM_EXIT_DIRTY_RING_FULL
   * when the ring is soft-full (the store did not retire; retry after a reset).
   */
  writeGuest(gpa: number | bigint, value: number | bigint): number {
    return this.core.kvm_vcpu_write(this.vm.addr, this.addr, gpaArg(gpa), BigInt.asUintN(64, BigInt(value)));
  }

  /** One 8-byte guest load at gpa; `exitReason` tells whether it exited (MMIO → 0n). */
  readGuest(gpa: number | bigint): bigint {
    return BigInt.asUintN(64, this.core.kvm_vcpu_read(this.vm.addr, this.addr, gpaArg(gpa)));
  }

  /** `count` stores of value at gpa, gpa+stride, …; stops at the first exit. Returns stores retired. */
  writeStrided(gpa: number | bigint, stride: number | bigint, count: number, value: number | bigint): number {
    const s = BigInt(stride);
    if (s % 8n !== 0n) throw new KvmError("EINVAL", "writeStrided");
    const v = BigInt.asUintN(64, BigInt(value));
    return this.core.kvm_vcpu_write_strided(this.vm.addr, this.addr, gpaArg(gpa), s, count >>> 0, v) >>> 0;
  }

  /**
   * Kick the vCPU out of guest mode (kvm_vcpu_kick, does not wait): a running vCPU exits,
   * drains its PML buffer into the ring or bitmap and re-enters. A vCPU outside KVM_RUN has
   * nothing to drain — every exit drains.
   */
  kick(): void {
    this.core.kvm_vcpu_kick(this.addr);
  }

  /**
   * kvm_vcpu_write_guest: KVM writes 8 bytes of guest memory on this vCPU's behalf (an
   * emulated instruction, a PV area update) through the memslot mapping — no SPTE, no
   * ring-full check — and marks the page dirty (ring push on a ring VM). This is why the
   * ring keeps a reserve: such pushes can land after the soft limit.
   */
  kvmWriteGuest(gpa: number | bigint, value: number | bigint): void {
    const ret = this.core.kvm_write_guest(this.vm.addr, this.addr, gpaArg(gpa), BigInt.asUintN(64, BigInt(value)));
    if (ret < 0) throw KvmError.fromReturn(ret, "kvm_vcpu_write_guest");
  }

  // ---- KVM_RUN and the vCPU's thread ----

  /**
   * Set the guest workload that KVM_RUN executes (inside WASM). Resets its progress.
   * Call while the vCPU is not running.
   */
  setWorkload(workload: Workload): void {
    writeWorkload(this.vm, this.addr, workload);
  }

  /** Give the vCPU its own thread (a worker instantiating the same compiled core). */
  async spawn(): Promise<void> {
    this.thread ??= await VcpuThread.spawn(this.vm.module, this.vm.memory, this.vm.addr, this.addr);
  }

  /** Does the vCPU have its own thread? */
  get threaded(): boolean {
    return this.thread !== undefined;
  }

  /**
   * KVM_RUN: execute the guest workload until an exit; resolves with the exit reason
   * (KVM_EXIT_IO when a batch is done, KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_MMIO,
   * KVM_EXIT_SHUTDOWN at the workload's limit, KVM_EXIT_INTR after requestExit()). Runs on
   * the vCPU's thread when it has one, else on the calling thread.
   */
  run(): Promise<number> {
    if (this.thread) return this.thread.run();
    return Promise.resolve(this.core.kvm_run(this.vm.addr, this.addr));
  }

  /** KVM_RUN on the calling thread. */
  runSync(): number {
    return this.core.kvm_run(this.vm.addr, this.addr);
  }

  /**
   * Run KVM_RUN in a loop on the vCPU's thread, like a VMM's vCPU thread: batches re-enter,
   * a full ring waits for a reset, `rate` (stores/s) paces the guest. Resolves with the
   * exit that ended the loop (SHUTDOWN, MMIO, …; INTR after terminate()).
   */
  startLoop(options: { rate?: number } = {}): Promise<number> {
    // with a thread already there the loop starts now (a caller may block right after)
    if (this.thread) return this.thread.startLoop(options.rate ?? 0);
    // pause()/terminate() wait for this start, so they never miss a loop still spawning
    this.starting = this.spawn();
    return this.starting.then(() => (this.thread as VcpuThread).startLoop(options.rate ?? 0));
  }

  /** Pause the loop and wait until the vCPU is parked outside guest mode. */
  async pause(): Promise<void> {
    await this.starting;
    await this.thread?.pause();
  }

  /** Resume a paused loop. */
  resume(): void {
    this.thread?.resume();
  }

  /** Make a running KVM_RUN return KVM_EXIT_INTR (a signal / immediate_exit). */
  requestExit(): void {
    const req = new Int32Array(this.vm.memory.buffer, this.addr + L.VCPU_REQUESTS, 1);
    Atomics.or(req, 0, 1 << L.KVM_REQ_EXIT);
  }

  /** @internal wake a loop sleeping on a full ring */
  wake(): void {
    this.thread?.wake();
  }

  /** End the vCPU's thread (its loop first). */
  async terminate(): Promise<void> {
    await this.starting;
    const t = this.thread;
    this.thread = undefined;
    await t?.terminate();
  }

  /** Stores the workload has retired so far. */
  get workloadStores(): bigint {
    return this.view().getBigUint64(this.addr + L.VCPU_WL_DONE, true);
  }

  /** run->exit_reason of the last access (0 when it retired). */
  get exitReason(): number {
    return this.view().getUint32(this.addr + L.VCPU_EXIT_REASON, true);
  }

  /** run->mmio.phys_addr of the last KVM_EXIT_MMIO. */
  get mmioPhysAddr(): bigint {
    return this.view().getBigUint64(this.addr + L.VCPU_MMIO_GPA, true);
  }

  /** gpa of the last store that retired. */
  get lastGpa(): bigint {
    return this.view().getBigUint64(this.addr + L.VCPU_LAST_GPA, true);
  }

  /** Enter (true) or leave (false) SMM: the vCPU then uses address space 1 (or 0). */
  set smm(on: boolean) {
    this.view().setUint32(this.addr + L.VCPU_AS, on ? 1 : 0, true);
  }
  get smm(): boolean {
    return this.view().getUint32(this.addr + L.VCPU_AS, true) === 1;
  }

  get stats(): VcpuStats {
    const v = this.view();
    return {
      stores: v.getBigUint64(this.addr + L.VCPU_STORES, true),
      fastFaults: v.getBigUint64(this.addr + L.VCPU_FAST_FAULTS, true),
      slowFaults: v.getBigUint64(this.addr + L.VCPU_SLOW_FAULTS, true),
      ringPushes: v.getBigUint64(this.addr + L.VCPU_RING_PUSHES, true),
      ringFullExits: v.getBigUint64(this.addr + L.VCPU_RING_FULL_EXITS, true),
      pmlFullExits: v.getBigUint64(this.addr + L.VCPU_PML_FULL_EXITS, true),
      tlbFlushes: v.getBigUint64(this.addr + L.VCPU_TLB_FLUSHES, true),
    };
  }

  private view(): DataView {
    return new DataView(this.vm.memory.buffer);
  }
}

function gpaArg(gpa: number | bigint): bigint {
  const g = BigInt.asUintN(64, BigInt(gpa));
  if (g & 7n) throw new KvmError("EINVAL", "guest access must be 8-byte aligned");
  return g;
}
