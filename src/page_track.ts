// Write tracking's external notifier API on the host (arch/x86/kvm/mmu/page_track.c
// kvm_page_track_register_notifier and friends; the core's side is assembly/page_track.ts).
//
// The kernel calls a notifier's track_write synchronously from the emulating vCPU. Here the
// notifiers are functions of the VM owner's thread, and vCPUs may run on worker threads,
// so the core queues one record per emulated write in the shared memory and this thread
// delivers them, oldest first:
//   - at the end of every vCPU call made on this thread (writeGuest, writeStrided, KVM_RUN
//     without a thread): a single-threaded caller sees its notifiers run before the call
//     returns, as with the kernel;
//   - whenever a vCPU worker publishes a record (Atomics.waitAsync on the queue's tail);
//   - before a slot is deleted (track_remove_region then comes after every write event
//     of that slot) and before a notifier is unregistered.
// A full queue stops the emulating vCPU before it writes (KVM_EXIT_PAGE_TRACK_FULL, the
// store not retired): on this thread the call drains and retries, a worker waits and
// re-enters. So no event is ever dropped, and a notifier sees every emulated write.
// Notifiers are called newest first (hlist_add_head_rcu + hlist_for_each_entry_srcu).
import type { CoreExports } from "./core.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";

/** What a page-track user (the kernel's kvm_page_track_notifier_node) gets told. */
export interface PageTrackNotifier {
  /**
   * A guest write to a write-tracked page was emulated: `bytes` (a copy) were written at
   * `gpa` (in the writing vCPU's address space). Called after the bytes are in memory.
   */
  trackWrite?(gpa: bigint, bytes: Uint8Array): void;
  /** A memslot of `nrPages` pages from `gfn` is being deleted (its tracking goes with it). */
  trackRemoveRegion?(gfn: bigint, nrPages: number): void;
}

/** Records in the event queue (32 bytes each). */
export const PAGE_TRACK_QUEUE_ENTRIES = 1024;

export class PageTrack {
  private readonly notifiers: PageTrackNotifier[] = [];
  private waiting = false;
  private stopped = false;
  /** The first error a notifier threw during a background delivery (rethrown by the next call). */
  private pending: unknown = undefined;

  constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly core: CoreExports,
    private readonly vm: number,
  ) {}

  private words(): Int32Array {
    return new Int32Array(this.memory.buffer);
  }

  /** External write tracking is enabled (gfn_write_track exists for every slot). */
  get enabled(): boolean {
    return Atomics.load(this.words(), (this.vm + L.VM_WRITE_TRACKING) >> 2) !== 0;
  }

  get count(): number {
    return this.notifiers.length;
  }

  has(n: PageTrackNotifier): boolean {
    return this.notifiers.includes(n);
  }

  /** Add a notifier (tracking already enabled by the caller). */
  add(n: PageTrackNotifier): void {
    this.notifiers.unshift(n); // hlist_add_head_rcu: the newest is called first
    this.core.kvm_page_track_set_notifiers(this.vm, this.notifiers.length);
    this.watch();
  }

  /** Remove a notifier once the events queued so far were delivered (synchronize_srcu). */
  remove(n: PageTrackNotifier): void {
    this.drain();
    this.notifiers.splice(this.notifiers.indexOf(n), 1);
    this.core.kvm_page_track_set_notifiers(this.vm, this.notifiers.length);
  }

  /**
   * Deliver every queued record, oldest first, to every notifier. Returns the number of
   * records. A notifier that throws does not stop the others or the queue: the first error
   * is rethrown once the queue is empty.
   */
  drain(): number {
    let n = 0;
    let error: unknown = this.pending;
    let failed = this.pending !== undefined;
    this.pending = undefined;
    const words = this.words();
    const headAt = (this.vm + L.VM_TRACK_HEAD) >> 2;
    const tailAt = (this.vm + L.VM_TRACK_TAIL) >> 2;
    const v = new DataView(this.memory.buffer);
    const queue = v.getUint32(this.vm + L.VM_TRACK_QUEUE, true);
    const entries = v.getUint32(this.vm + L.VM_TRACK_ENTRIES, true);
    while (queue !== 0) {
      const head = Atomics.load(words, headAt) >>> 0;
      const tail = Atomics.load(words, tailAt) >>> 0; // acquire: the records before it are written
      if (head === tail) break;
      const rec = queue + (head & (entries - 1)) * L.TRACK_EVENT_SIZE;
      const gpa = v.getBigUint64(rec, true);
      const len = v.getUint32(rec + 8, true);
      const bytes = new Uint8Array(this.memory.buffer, rec + 16, len);
      for (const t of [...this.notifiers]) {
        if (!t.trackWrite) continue;
        try {
          t.trackWrite(gpa, bytes.slice());
        } catch (e) {
          if (!failed) error = e;
          failed = true;
        }
      }
      Atomics.store(words, headAt, (head + 1) | 0); // the record's room is free again
      n++;
    }
    if (n > 0) Atomics.notify(words, headAt); // a vCPU worker may wait for room
    if (failed) throw error;
    return n;
  }

  /** kvm_page_track_delete_slot: the write events first, then track_remove_region. */
  removeRegion(gfn: bigint, nrPages: number): void {
    let error: unknown;
    let failed = false;
    try {
      this.drain();
    } catch (e) {
      error = e;
      failed = true;
    }
    for (const t of [...this.notifiers]) {
      if (!t.trackRemoveRegion) continue;
      try {
        t.trackRemoveRegion(gfn, nrPages);
      } catch (e) {
        if (!failed) error = e;
        failed = true;
      }
    }
    if (failed) throw error;
  }

  /**
   * Deliver records as vCPU workers publish them: wait (without blocking) for the tail to
   * move, drain, wait again, while a notifier is registered. An error a notifier throws
   * here is kept and rethrown by the next drain on this thread.
   */
  private watch(): void {
    if (this.waiting || this.stopped || typeof Atomics.waitAsync !== "function") return;
    const words = this.words();
    const tailAt = (this.vm + L.VM_TRACK_TAIL) >> 2;
    const headAt = (this.vm + L.VM_TRACK_HEAD) >> 2;
    const tail = Atomics.load(words, tailAt);
    this.waiting = true;
    const again = () => {
      this.waiting = false;
      if (this.stopped || this.notifiers.length === 0) return;
      try {
        this.drain();
      } catch (e) {
        if (this.pending === undefined) this.pending = e;
      }
      this.watch();
    };
    if (Atomics.load(words, headAt) !== tail) {
      queueMicrotask(again); // records are waiting already
      return;
    }
    const w = Atomics.waitAsync(words, tailAt, tail);
    if (w.async) void w.value.then(again);
    else queueMicrotask(again);
  }

  /** The VM goes away: stop watching (the pending wait is woken and ends). */
  stop(): void {
    this.stopped = true;
    Atomics.notify(this.words(), (this.vm + L.VM_TRACK_TAIL) >> 2);
  }
}

/** Validate a notifier: an object whose trackWrite / trackRemoveRegion, if present, are functions. */
export function checkNotifier(n: unknown, call: string): PageTrackNotifier {
  if (typeof n !== "object" || n === null) throw new KvmError("EINVAL", call, "the notifier must be an object");
  // other fields are the user's own (the kernel's node is embedded in its user's struct);
  // either callback may be missing, as in the kernel
  const o = n as Record<string, unknown>;
  for (const k of ["trackWrite", "trackRemoveRegion"]) {
    if (o[k] !== undefined && typeof o[k] !== "function") throw new KvmError("EINVAL", call, `${k} must be a function`);
  }
  return n as PageTrackNotifier;
}
