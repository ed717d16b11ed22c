// Vcpu: a vCPU file descriptor. Its vCPU-context calls (KVM_RUN, guest accesses, KVM's
// writes on its behalf, workload and SMM changes) run on the calling thread, or on the
// vCPU's own worker thread (run(), startLoop()).
//
// Invariant (vcpu->mutex, assembly/vcpu.ts): one thread drives a vCPU at a time. While a
// run loop or a single run() is in flight on the worker, every vCPU-context call from
// another thread is rejected with EBUSY and changes nothing; a paused loop frees the vCPU.
import { CAN_BLOCK, type CoreExports, HOST_TAG } from "./core.js";
import { bool, finite, int, known, object, u64 } from "./args.js";
import type { GfnToPfnCache } from "./pfncache.js";
import { NO_RUNSTATE_AREA, type XenRunstate, kvmclockNs } from "./xen.js";
import { ERRNO, KvmError } from "./errors.js";
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
  /** Nanoseconds its worker loop waited on a full ring (KVM_EXIT_DIRTY_RING_FULL until a reset). */
  ringFullStallNs: bigint;
  /** Nanoseconds its worker loop slept for a throttle: dirty-limit at ring-full exits, auto-converge per timeslice. */
  throttleNs: bigint;
}

/** The kernel-private ring indices (struct kvm_dirty_ring), for tests and tools. */
export interface DirtyRingState {
  entries: number;
  softLimit: number;
  dirtyIndex: number;
  resetIndex: number;
}

export interface LoopOptions {
  /** Guest stores per second (0 = as fast as it goes). */
  rate?: number;
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
  private spawning: Promise<VcpuThread> | undefined;
  /** terminate() calls whose thread has not ended yet. */
  private readonly ending = new Set<Promise<void>>();
  /** The loop in flight (cleared when it ends). */
  private loopEnded: Promise<number> | undefined;
  /** The last loop's end, kept after it ended (for `loopEnd`). */
  private lastLoopEnd: Promise<number> | undefined;

  /**
   * @internal The collect buffer (src/dirty_ring_collector.ts collectDirtyRingInPlace): one
   * u32 slot per ring entry, then one f64 offset per ring entry, in the shared memory; 0
   * without a ring.
   */
  readonly collectBuffer: number;

  constructor(vm: Vm, core: CoreExports, addr: number, id: number, collectBuffer = 0) {
    this.collectBuffer = collectBuffer;
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
    this.vm.checkAlive("dirtyRingState");
    const v = this.view();
    return {
      entries: v.getUint32(this.addr + L.VCPU_RING_ENTRIES, true),
      softLimit: v.getUint32(this.addr + L.VCPU_RING_SOFT_LIMIT, true),
      dirtyIndex: v.getUint32(this.addr + L.VCPU_DIRTY_INDEX, true),
      resetIndex: v.getUint32(this.addr + L.VCPU_RESET_INDEX, true),
    };
  }

  /** A core return value of a vCPU-context call: -EBUSY when another thread drives the vCPU. */
  private owned(ret: number, call: string): number {
    if (ret < 0) {
      const who = this.thread?.looping ? "its run loop" : "another thread";
      throw KvmError.fromReturn(ret, call, `vCPU ${this.id} is being driven by ${who}`);
    }
    return ret;
  }

  /**
   * One 8-byte guest store at gpa (8-aligned). Returns 0 when the store retired, or the
   * exit reason: KVM_EXIT_MMIO for no slot or a read-only slot, KVM_EXIT_DIRTY_RING_FULL
   * when the ring is soft-full (the store did not retire; retry after a reset).
   */
  writeGuest(gpa: number | bigint, value: number | bigint): number {
    const call = "writeGuest";
    this.vm.checkAlive(call);
    const g = gpaArg(gpa, call);
    const v = u64(value, "value", call);
    return this.delivering(() => this.owned(this.core.kvm_vcpu_write(this.vm.addr, this.addr, HOST_TAG, g, v), call));
  }

  /**
   * A vCPU call on the VM owner's thread: deliver the page-track events it queued before
   * returning (the kernel calls notifiers synchronously), and when the event queue was full
   * (KVM_EXIT_PAGE_TRACK_FULL: the store did not retire) deliver and run it again.
   */
  private delivering(fn: () => number, full: (r: number) => boolean = (r) => r === L.KVM_EXIT_PAGE_TRACK_FULL): number {
    while (true) {
      const r = fn();
      this.vm.deliverPageTrackEvents();
      if (!full(r)) return r;
    }
  }

  /** One 8-byte guest load at gpa; `exitReason` tells whether it exited (MMIO → 0n). */
  readGuest(gpa: number | bigint): bigint {
    const call = "readGuest";
    this.vm.checkAlive(call);
    this.owned(this.core.kvm_vcpu_read(this.vm.addr, this.addr, HOST_TAG, gpaArg(gpa, call)), call);
    return this.view().getBigUint64(this.addr + L.VCPU_READ_VALUE, true);
  }

  /**
   * `count` (< 2^31) stores of value at gpa, gpa+stride, …; stops at the first exit.
   * Returns stores retired.
   */
  writeStrided(gpa: number | bigint, stride: number | bigint, count: number, value: number | bigint): number {
    const call = "writeStrided";
    this.vm.checkAlive(call);
    const g = gpaArg(gpa, call);
    const s = u64(stride, "stride", call);
    if (s % 8n !== 0n) throw new KvmError("EINVAL", call, `stride ${stride} is not a multiple of 8`);
    const n = int(count, "count", call, 0, 0x7fff_ffff);
    const v = u64(value, "value", call);
    let done = 0;
    return this.delivering(
      () => {
        const at = g + BigInt(done) * s;
        done += this.owned(this.core.kvm_vcpu_write_strided(this.vm.addr, this.addr, HOST_TAG, at, s, n - done, v), call);
        return done;
      },
      () => done < n && this.exitReason === L.KVM_EXIT_PAGE_TRACK_FULL,
    );
  }

  /**
   * Kick the vCPU out of guest mode (kvm_vcpu_kick, does not wait): a running vCPU exits,
   * drains its PML buffer into the ring or bitmap and re-enters. A vCPU outside KVM_RUN has
   * nothing to drain — every exit drains. Any thread may kick.
   */
  kick(): void {
    this.vm.checkAlive("kick");
    this.core.kvm_vcpu_kick(this.addr);
  }

  /**
   * kvm_vcpu_write_guest: KVM writes 8 bytes of guest memory on this vCPU's behalf (an
   * emulated instruction, a PV area update) through the memslot mapping — no SPTE, no
   * ring-full check — and marks the page dirty (ring push on a ring VM). This is why the
   * ring keeps a reserve: such pushes can land after the soft limit. vCPU context: EBUSY
   * while the vCPU runs on another thread.
   */
  kvmWriteGuest(gpa: number | bigint, value: number | bigint): void {
    const call = "kvm_vcpu_write_guest";
    this.vm.checkAlive(call);
    const g = gpaArg(gpa, call);
    const v = u64(value, "value", call);
    const ret = this.core.kvm_write_guest(this.vm.addr, this.addr, HOST_TAG, g, v, CAN_BLOCK);
    if (ret === -ERRNO.EBUSY) this.owned(ret, call);
    if (ret < 0) throw KvmError.fromReturn(ret, call, `no writable memslot maps gpa 0x${g.toString(16)}`);
  }

  /**
   * A gfn_to_pfn_cache whose accesses are made in this vCPU's context, activated on the
   * page of `gpa` for accesses of `len` bytes (vm.createGfnToPfnCache({ vcpu }) + activate).
   */
  createGfnToPfnCache(gpa: number | bigint, len: number): GfnToPfnCache {
    const gpc = this.vm.createGfnToPfnCache({ vcpu: this });
    try {
      gpc.activate(gpa, len);
    } catch (e) {
      gpc.deactivate(); // a failed activation leaves the cache active (as in the kernel)
      this.vm.releaseRegion(gpc.addr, L.GPC_SIZE);
      throw e;
    }
    return gpc;
  }

  // ---- Xen runstate area (assembly/xen.ts) ----

  /**
   * KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR: the guest placed its vcpu_runstate_info at `gpa`
   * (null: none), in the 32-bit layout with `compat`. It may cross a page, even a memslot
   * boundary (two pfn caches then). The current state is written at once; from then on KVM
   * rewrites it at each updateXenRunstate and around each KVM_RUN of the vCPU's loop,
   * with the XEN_RUNSTATE_UPDATE protocol, and marks the page(s) dirty in this vCPU's
   * context. EFAULT when a page of it is in no memslot; EBUSY while another thread drives
   * the vCPU.
   */
  setXenRunstateArea(gpa: number | bigint | null, options: { compat?: boolean } = {}): void {
    const call = "KVM_XEN_VCPU_SET_ATTR(RUNSTATE_ADDR)";
    this.vm.checkAlive(call);
    object(options, "options", call);
    known(options, ["compat"], call);
    const g = gpa === null ? NO_RUNSTATE_AREA : u64(gpa, "gpa", call);
    const compat = bool(options.compat ?? false, "compat", call);
    const ret = this.core.kvm_xen_set_runstate_area(this.addr, HOST_TAG, g, compat ? 1 : 0, CAN_BLOCK);
    if (ret === -ERRNO.EBUSY) this.owned(ret, call);
    if (ret < 0) throw KvmError.fromReturn(ret, call, `the area at gpa 0x${g.toString(16)} is not all in memslots`);
  }

  /**
   * kvm_xen_update_runstate: the vCPU enters `state` (RUNSTATE_*) now; the guest copy is
   * rewritten (all or nothing) if an area is set. `atomic: true` is atomic context (a vCPU
   * being scheduled out): no refresh of an invalid cache, and a contended lock means give
   * up. `now`: the kvmclock time in ns (default: ns since the VM was created). Returns
   * whether the guest copy was written.
   */
  updateXenRunstate(state: number, options: { atomic?: boolean; now?: bigint } = {}): boolean {
    const call = "kvm_xen_update_runstate";
    this.vm.checkAlive(call);
    object(options, "options", call);
    known(options, ["atomic", "now"], call);
    const s = int(state, "state", call, 0, 3);
    const atomic = bool(options.atomic ?? false, "atomic", call);
    const base = this.view().getBigUint64(this.vm.addr + L.VM_KVMCLOCK_BASE, true);
    const now = options.now === undefined ? kvmclockNs(base) : u64(options.now, "now", call);
    const ret = this.core.kvm_xen_update_runstate(this.addr, HOST_TAG, s, now, atomic ? 1 : 0, CAN_BLOCK);
    return this.owned(ret, call) === 1;
  }

  /** What KVM keeps for this vCPU's runstate. */
  get xenRunstate(): XenRunstate {
    const v = this.view();
    const gpa = v.getBigUint64(this.addr + L.VCPU_XEN_RS_GPA, true);
    const t = (i: number) => v.getBigUint64(this.addr + L.VCPU_XEN_RS_TIMES + 8 * i, true);
    return {
      gpa: gpa === NO_RUNSTATE_AREA ? undefined : gpa,
      compat: v.getUint32(this.addr + L.VCPU_XEN_RS_COMPAT, true) !== 0,
      state: v.getUint32(this.addr + L.VCPU_XEN_RS_STATE, true),
      entryTime: v.getBigUint64(this.addr + L.VCPU_XEN_RS_ENTRY, true),
      times: [t(0), t(1), t(2), t(3)],
      updates: v.getUint32(this.addr + L.VCPU_XEN_RS_UPDATES, true),
      skipped: v.getUint32(this.addr + L.VCPU_XEN_RS_SKIPPED, true),
    };
  }

  // ---- KVM_RUN and the vCPU's thread ----

  /** Run `fn` holding vcpu->mutex on this thread (EBUSY while another thread drives the vCPU). */
  private withVcpu<T>(call: string, fn: () => T): T {
    this.owned(this.core.kvm_vcpu_lock(this.addr, HOST_TAG), call);
    try {
      return fn();
    } finally {
      this.core.kvm_vcpu_unlock(this.addr, HOST_TAG);
    }
  }

  /**
   * Load the guest's CR3 and paging mode (vCPU context): `{ cr3, mode: "long" }` makes every
   * guest access (writeGuest, readGuest, writeStrided, workloads) take a guest-virtual
   * address, translated through the guest's 4-level tables at cr3 (see buildPageTables);
   * `mode: "32bit"`, through a 32-bit non-PAE guest's 2-level tables of 4-byte entries;
   * `null` runs the guest unpaged again (gva = gpa). Flushes the vCPU's TLB, as a CR3 load
   * does. A gva the tables do not map, or a write through a read-only gPTE, is a guest page
   * fault: the access exits KVM_EXIT_EXCEPTION with the gva in `faultAddress`. On the shadow
   * MMU the guest's tables are shadowed (indirect shadow pages, write-tracked or unsync) and a
   * CR3 load syncs the unsync ones. EINVAL for an unaligned cr3 or another mode; EBUSY while
   * another thread drives the vCPU.
   */
  setPaging(paging: { cr3: number | bigint; mode: "long" | "32bit" } | null): void {
    const call = "setPaging";
    this.vm.checkAlive(call);
    let cr3 = 0n;
    let mode = L.PAGING_OFF;
    if (paging !== null) {
      const p = object<{ cr3: number | bigint; mode: "long" | "32bit" }>(paging, "paging", call, false);
      known(p, ["cr3", "mode"], call);
      cr3 = u64(p.cr3, "cr3", call);
      if (cr3 % 4096n !== 0n) throw new KvmError("EINVAL", call, `cr3 0x${cr3.toString(16)} is not page-aligned`);
      if (p.mode !== "long" && p.mode !== "32bit") {
        throw new KvmError("EINVAL", call, 'mode must be "long" (4-level, 8-byte gPTEs) or "32bit" (2-level, 4-byte gPTEs)');
      }
      if (p.mode === "32bit" && cr3 >= 1n << 32n) throw new KvmError("EINVAL", call, "a 32-bit guest's cr3 is below 4 GiB");
      mode = p.mode === "long" ? L.PAGING_LONG : L.PAGING_32BIT;
    }
    // vcpu->mutex first (EBUSY changes nothing), then what a shadow root needs: its guest
    // tables are write-tracked
    this.withVcpu(call, () => {
      if (mode !== L.PAGING_OFF && this.vm.mmu === "shadow") this.vm.ensureWriteTracking(call);
      this.owned(this.core.kvm_set_cr3(this.vm.addr, this.addr, HOST_TAG, cr3, mode), call);
    });
  }

  /** The guest's paging: `{ cr3, mode }`, or null when it runs unpaged. */
  get paging(): { cr3: bigint; mode: "long" | "32bit" } | null {
    this.vm.checkAlive("paging");
    const v = this.view();
    const mode = v.getUint32(this.addr + L.VCPU_PAGING, true);
    if (mode === L.PAGING_OFF) return null;
    return { cr3: v.getBigUint64(this.addr + L.VCPU_CR3, true), mode: mode === L.PAGING_LONG ? "long" : "32bit" };
  }

  /** INVLPG gva (vCPU context): the vCPU drops its cached translation. EBUSY as setPaging. */
  invlpg(gva: number | bigint): void {
    const call = "invlpg";
    this.vm.checkAlive(call);
    const g = u64(gva, "gva", call);
    this.owned(this.core.kvm_mmu_invlpg(this.vm.addr, this.addr, HOST_TAG, g), call);
  }

  /** The gva of the last guest page fault (after KVM_EXIT_EXCEPTION). */
  get faultAddress(): bigint {
    this.vm.checkAlive("faultAddress");
    return this.view().getBigUint64(this.addr + L.VCPU_FAULT_ADDR, true);
  }

  /**
   * Set the guest workload that KVM_RUN executes (inside WASM). Resets its progress.
   * EBUSY while the vCPU runs on another thread; a rejected workload changes nothing.
   */
  setWorkload(workload: Workload): void {
    const call = "setWorkload";
    this.vm.checkAlive(call);
    this.withVcpu(call, () => writeWorkload(this.vm, this.addr, workload));
  }

  /** Give the vCPU its own thread (a worker instantiating the same compiled core). */
  async spawn(): Promise<void> {
    await this.ensureThread("spawn");
  }

  private ensureThread(call: string): Promise<VcpuThread> {
    try {
      this.vm.checkAlive(call);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.thread?.alive) return Promise.resolve(this.thread);
    if (!this.spawning) {
      const spawning = VcpuThread.spawn({
        module: this.vm.module,
        memory: this.vm.memory,
        core: this.core,
        vm: this.vm.addr,
        vcpu: this.addr,
        id: this.id,
        workerUrl: this.vm.workerUrl,
        onBug: (reason) => this.vm.bug(reason),
      });
      this.spawning = spawning;
      spawning.then(
        (t) => {
          if (this.spawning !== spawning) return; // abandoned by dispose() meanwhile
          this.thread = t;
          this.spawning = undefined;
        },
        () => {
          if (this.spawning === spawning) this.spawning = undefined;
        },
      );
    }
    return this.spawning;
  }

  /** Does the vCPU have its own (working) thread? */
  get threaded(): boolean {
    return this.thread?.alive === true;
  }

  /**
   * KVM_RUN: execute the guest workload until an exit; resolves with the exit reason
   * (KVM_EXIT_IO when a batch is done, KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_MMIO,
   * KVM_EXIT_PAGE_TRACK_FULL when page-track events filled their queue: they are delivered
   * before this resolves, and the store is retried by the next KVM_RUN,
   * KVM_EXIT_SHUTDOWN at the workload's limit, KVM_EXIT_INTR after requestExit()). Runs on
   * the vCPU's thread when it has one, else on the calling thread. EBUSY during a loop.
   */
  run(): Promise<number> {
    try {
      this.vm.checkAlive("KVM_RUN");
      if (this.loopEnded) throw new KvmError("EBUSY", "KVM_RUN", `vCPU ${this.id} is running its loop`);
      if (this.thread?.alive) return this.thread.run();
      return Promise.resolve(this.runSync());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** KVM_RUN on the calling thread (EBUSY while the vCPU runs on another thread). */
  runSync(): number {
    const call = "KVM_RUN";
    this.vm.checkAlive(call);
    // a full page-track queue ends this KVM_RUN (KVM_EXIT_PAGE_TRACK_FULL, the store
    // pending); its events are delivered here, so the next KVM_RUN goes on
    return this.delivering(
      () => this.owned(this.core.kvm_run(this.vm.addr, this.addr, HOST_TAG), call),
      () => false,
    );
  }

  /**
   * Run KVM_RUN in a loop on the vCPU's thread, like a VMM's vCPU thread: batches re-enter,
   * a full ring waits for a reset, `rate` (stores/s) paces the guest. Resolves once the
   * worker is running the vCPU (it holds vcpu->mutex: calls from this thread now get
   * EBUSY until pause()); the exit that ends the loop comes from `loopEnd`. A second
   * startLoop while a loop exists (or is starting) rejects with EBUSY.
   */
  startLoop(options: LoopOptions = {}): Promise<void> {
    const call = "startLoop";
    let rate: number;
    try {
      this.vm.checkAlive(call);
      const o = object<LoopOptions>(options, "options", call);
      known(o, ["rate"], call);
      rate = o.rate === undefined ? 0 : finite(o.rate, "rate", call, 0, Number.MAX_SAFE_INTEGER);
      if (this.loopEnded) throw new KvmError("EBUSY", call, `vCPU ${this.id} already has a run loop`);
    } catch (e) {
      return Promise.reject(e);
    }
    let settle!: { resolve(v: number): void; reject(e: unknown): void };
    const end = new Promise<number>((resolve, reject) => {
      settle = { resolve, reject };
    });
    end.catch(() => {}); // for whoever awaits loopEnd; never an unhandled rejection
    this.loopEnded = end;
    this.lastLoopEnd = end;
    const clear = () => {
      if (this.loopEnded === end) this.loopEnded = undefined;
    };
    end.then(clear, clear);
    const started = this.ensureThread(call).then((thread) => {
      // dispose() may have come while the thread was spawning: its abandon() runs after
      // this callback, so a loop started now could still report "started" (EBADF instead)
      this.vm.checkAlive(call);
      const loop = thread.startLoop(rate);
      loop.end.then(settle.resolve, settle.reject);
      return loop.started;
    });
    started.catch(settle.reject);
    return started;
  }

  /**
   * The exit that ends (or ended) the last run loop started (KVM_EXIT_INTR after
   * terminate()/close(), SHUTDOWN, MMIO, …), or undefined before the first startLoop.
   * Rejects with EIO if the vCPU's thread failed.
   */
  get loopEnd(): Promise<number> | undefined {
    return this.lastLoopEnd;
  }

  /** Pause the loop and wait until the vCPU is parked outside guest mode. */
  async pause(): Promise<void> {
    this.vm.checkAlive("pause");
    if (!this.loopEnded) return;
    const thread = await this.ensureThread("pause").catch(() => undefined);
    await thread?.pause();
  }

  /** Resume a paused loop. */
  resume(): void {
    this.vm.checkAlive("resume");
    this.thread?.resume();
  }

  /** Make a running KVM_RUN return KVM_EXIT_INTR (a signal / immediate_exit). */
  requestExit(): void {
    this.vm.checkAlive("requestExit");
    const req = new Int32Array(this.vm.memory.buffer, this.addr + L.VCPU_REQUESTS, 1);
    Atomics.or(req, 0, 1 << L.KVM_REQ_EXIT);
  }

  /** @internal wake a loop sleeping on a full ring */
  wake(): void {
    this.thread?.wake();
  }

  /** End the vCPU's thread (its loop or run first, within a bounded wait). */
  terminate(): Promise<void> {
    const end = (async () => {
      const t = this.thread ?? (await this.spawning?.catch(() => undefined));
      this.thread = undefined;
      await t?.terminate();
    })().finally(() => this.ending.delete(end));
    this.ending.add(end);
    return end;
  }

  /**
   * @internal dispose(): tell the thread (and one still spawning) to end without waiting
   * for it. Settles once every thread of this vCPU has ended — including one a terminate()
   * in progress is ending — so nothing can write the VM's memory any more (Node delivers
   * a worker's last messages before its exit, so their handlers have run too).
   */
  abandon(): Promise<void> {
    const ended: Array<Promise<unknown>> = [...this.ending];
    if (this.thread) ended.push(this.thread.abandon());
    if (this.spawning) ended.push(this.spawning.then((t) => t.abandon(), () => {}));
    this.thread = undefined;
    this.spawning = undefined;
    return Promise.allSettled(ended).then(() => {});
  }

  /** @internal no thread of this vCPU exists or is being ended (close() joined it, or none). */
  get joined(): boolean {
    return this.thread === undefined && this.spawning === undefined && this.ending.size === 0;
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

  /** Enter (true) or leave (false) SMM: the vCPU then uses address space 1 (or 0). vCPU context. */
  set smm(on: boolean) {
    const call = "smm";
    this.vm.checkAlive(call);
    if (typeof on !== "boolean") throw new KvmError("EINVAL", call, "smm must be true or false");
    this.withVcpu(call, () => this.owned(this.core.kvm_smm_changed(this.vm.addr, this.addr, HOST_TAG, on ? 1 : 0), call));
  }
  get smm(): boolean {
    this.vm.checkAlive("smm");
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
      ringFullStallNs: v.getBigUint64(this.addr + L.VCPU_STALL_NS, true),
      throttleNs: v.getBigUint64(this.addr + L.VCPU_THROTTLE_NS, true),
    };
  }

  private view(): DataView {
    this.vm.checkAlive(`vCPU ${this.id}`);
    return new DataView(this.vm.memory.buffer);
  }
}

/** A guest-physical address: a u64, 8-aligned (guest accesses are 8-byte stores). */
function gpaArg(gpa: unknown, call: string): bigint {
  // the common case without BigInt arithmetic: a safe, 8-aligned, non-negative number
  if (typeof gpa === "number" && gpa >= 0 && gpa <= Number.MAX_SAFE_INTEGER && gpa % 8 === 0) return BigInt(gpa);
  const g = u64(gpa, "gpa", call);
  if (g & 7n) throw new KvmError("EINVAL", call, `gpa 0x${g.toString(16)} is not 8-byte aligned`);
  return g;
}
