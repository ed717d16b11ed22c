// page_track — write tracking: per-gfn u16 counters, the huge-page disallow counters they
// drive, and the external notifier API's event queue (arch/x86/kvm/mmu/page_track.c, the
// lpage helpers of mmu.c; spec §4).
//
// Per slot, when write tracking is enabled, one region at SLOT_WRITE_TRACK:
//   +0                 gfn_write_track: u16 per 4K page (index = gfn − base_gfn)
//   +ALIGN(2n, 8)      disallow_lpage for 2M frames: u32 per frame, index gfn_to_index(gfn, 2M)
//   +… (n>>9)+2 u32    disallow_lpage for 1G frames: u32 per frame, index gfn_to_index(gfn, 1G)
// (only tracking contributes to these counters here; the kernel's head/tail/misalignment
// entries are slot_level_allowed's rule in kvm_host.ts.)
//
// Enablement (the 6.6 rule): tracking is enabled by the first notifier registration. The
// host allocates the region of every existing slot, then the core release-stores
// VM_WRITE_TRACKING; slots created later get their region at creation. Until then every
// tracked check is false and nothing is allocated (the TDP MMU alone never needs it).
//
// Event queue (VM_TRACK_*): a guest write to a tracked page is emulated by its vCPU, and
// the external notifiers' track_write must see it. Notifiers are JS functions of the VM
// owner's thread, so the core never calls them: the emulating vCPU appends a record
//   u64 gpa | u32 bytes | u32 as_id | 16 bytes written
// under VM_TRACK_LOCK, publishes VM_TRACK_TAIL and notifies it; the owner thread consumes
// from VM_TRACK_HEAD, calls the notifiers, publishes the head and notifies it. A record is
// appended only while a notifier is registered (hlist_empty → nothing to tell).
//
// Invariants:
//   - counters change only under mmu_lock for write; an update that would leave 0..65535
//     is refused, counted in VM_TRACK_WARN, and the value stays (update_gfn_write_track);
//   - a tracked gfn never has a writable SPTE: add write-protects shadow style (W and
//     MMU-writable cleared, so the lockless fast path cannot restore W) and flushes before
//     mmu_lock is dropped; faults map a tracked gfn read-only;
//   - room for an emulated write's record is taken before the write (check, then act): a
//     vCPU that finds the queue full exits (KVM_EXIT_PAGE_TRACK_FULL) with nothing written,
//     and its store is retried at the next KVM_RUN, like a store stopped by a full ring.
import {
  SLOT_BASE_GFN,
  SLOT_NPAGES,
  SLOT_WRITE_TRACK,
  TRACK_EVENT_SIZE,
  VM_TRACK_ENTRIES,
  VM_TRACK_HEAD,
  VM_TRACK_LOCK,
  VM_TRACK_NOTIFIERS,
  VM_TRACK_QUEUE,
  VM_TRACK_TAIL,
  VM_TRACK_WARN,
  VM_WRITE_TRACKING,
} from "./layout";
import { memslot_lookup } from "./kvm_host";
import { lockdep_assert_held_write } from "./mmu_lock";

// ---- storage ----

@inline function track_words(npages: u64): u64 {
  return (npages * 2 + 7) & ~(<u64>7);
}
@inline function frames(npages: u64, level: u32): u64 {
  return (npages >> (9 * (level - 1))) + 2;
}

/** Bytes of a slot's write-tracking region (kvm_page_track_create_memslot + lpage_info). */
export function page_track_bytes(npages: u64): u64 {
  return track_words(npages) + 4 * (frames(npages, 2) + frames(npages, 3));
}

/** kvm_page_track_write_tracking_enabled. */
@inline export function write_tracking_enabled(vm: usize): bool {
  return atomic.load<u32>(vm + VM_WRITE_TRACKING) != 0;
}

/** The disallow_lpage counter of the frame at `level` (2 or 3) containing gfn. */
@inline function lpage_counter(slot: usize, gfn: u64, level: u32): usize {
  const region = <usize>load<u32>(slot + SLOT_WRITE_TRACK);
  const npages = load<u64>(slot + SLOT_NPAGES);
  const base = load<u64>(slot + SLOT_BASE_GFN);
  const shift = 9 * (level - 1);
  let at = region + <usize>track_words(npages);
  if (level == 3) at += <usize>(frames(npages, 2) << 2);
  return at + <usize>(((gfn >> shift) - (base >> shift)) << 2);
}

/** kvm_gfn_is_write_tracked: the gfn's counter is non-zero (false without tracking). */
@inline export function gfn_is_write_tracked(slot: usize, gfn: u64): bool {
  const region = <usize>load<u32>(slot + SLOT_WRITE_TRACK);
  if (region == 0) return false;
  return atomic.load<u16>(region + <usize>((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 1)) != 0;
}

/** The write-track count of gfn in address space 0: -1 without a slot, 0 without tracking. */
export function gfn_write_track_count(vm: usize, gfn: u64): i32 {
  const slot = memslot_lookup(vm, 0, gfn);
  if (slot == 0) return -1;
  const region = <usize>load<u32>(slot + SLOT_WRITE_TRACK);
  if (region == 0) return 0;
  return <i32>atomic.load<u16>(region + <usize>((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 1));
}

/** Does write tracking keep a mapping of `level` (2 or 3) off the frame containing gfn? */
@inline export function lpage_disallowed(slot: usize, gfn: u64, level: u32): bool {
  if (load<u32>(slot + SLOT_WRITE_TRACK) == 0) return false;
  return atomic.load<u32>(lpage_counter(slot, gfn, level)) != 0;
}

// ---- counters (mmu_lock held for write) ----

/** update_gfn_write_track: add delta, unless the result leaves 0..65535 (WARN, unchanged). */
export function update_gfn_write_track(vm: usize, slot: usize, gfn: u64, delta: i32): void {
  lockdep_assert_held_write(vm);
  if (load<u32>(slot + SLOT_WRITE_TRACK) == 0) return; // (tracking off: the callers enable it first)
  const p = <usize>load<u32>(slot + SLOT_WRITE_TRACK) + <usize>((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 1);
  const val = <i32>load<u16>(p) + delta;
  if (val < 0 || val > 0xffff) {
    atomic.add<u32>(vm + VM_TRACK_WARN, 1);
    return;
  }
  atomic.store<u16>(p, <u16>val);
}

/** kvm_mmu_gfn_disallow_lpage (delta 1) / kvm_mmu_gfn_allow_lpage (delta -1), 2M and 1G. */
export function update_gfn_disallow_lpage(vm: usize, slot: usize, gfn: u64, delta: i32): void {
  lockdep_assert_held_write(vm);
  if (load<u32>(slot + SLOT_WRITE_TRACK) == 0) return;
  for (let level: u32 = 2; level <= 3; level++) {
    const p = lpage_counter(slot, gfn, level);
    atomic.store<u32>(p, <u32>(<i32>load<u32>(p) + delta));
  }
}

// ---- the event queue ----

/** Is a notifier registered (the events have a reader)? */
@inline export function page_track_has_external_user(vm: usize): bool {
  return atomic.load<u32>(vm + VM_TRACK_NOTIFIERS) != 0;
}

/**
 * Take the producers' lock if there is room for one record: 1 (lock held), -1 when the
 * queue is full (lock not held), 0 when no notifier is registered (nothing to queue).
 * The emulating vCPU holds the lock across its write, so records are published in the
 * order the writes happened and a record is never published before its bytes landed.
 */
export function page_track_reserve(vm: usize): i32 {
  if (!page_track_has_external_user(vm)) return 0;
  const lock = vm + VM_TRACK_LOCK;
  while (atomic.cmpxchg<u32>(lock, 0, 1) != 0) {}
  if (atomic.load<u32>(vm + VM_TRACK_TAIL) - atomic.load<u32>(vm + VM_TRACK_HEAD) >= load<u32>(vm + VM_TRACK_ENTRIES)) {
    atomic.store<u32>(lock, 0);
    return -1;
  }
  return 1;
}

/**
 * __kvm_page_track_write, after page_track_reserve: queue (gpa, the `len` ≤ 8 low bytes of
 * `value`, little-endian) for the notifiers, publish it, drop the lock, wake the owner.
 * `reserved` is page_track_reserve's result: nothing is queued unless it is 1.
 */
export function page_track_write(vm: usize, reserved: i32, as_id: u32, gpa: u64, value: u64, len: u32): void {
  if (reserved != 1) return;
  const lock = vm + VM_TRACK_LOCK;
  const tail = load<u32>(vm + VM_TRACK_TAIL);
  const entries = load<u32>(vm + VM_TRACK_ENTRIES);
  const rec = <usize>load<u32>(vm + VM_TRACK_QUEUE) + <usize>((tail & (entries - 1)) * TRACK_EVENT_SIZE);
  store<u64>(rec, gpa);
  store<u32>(rec + 8, len);
  store<u32>(rec + 12, as_id);
  store<u64>(rec + 16, value);
  store<u64>(rec + 24, 0);
  atomic.store<u32>(vm + VM_TRACK_TAIL, tail + 1); // publishes the record
  atomic.store<u32>(lock, 0);
  atomic.notify(vm + VM_TRACK_TAIL);
}

/**
 * Enable external write tracking (the first kvm_page_track_register_notifier): the host has
 * given every existing slot its region (kvm_page_track_alloc_slot) and hands in the queue.
 */
export function kvm_page_track_enable(vm: usize, queue: usize, entries: u32): void {
  store<u32>(vm + VM_TRACK_QUEUE, <u32>queue);
  store<u32>(vm + VM_TRACK_ENTRIES, entries);
  atomic.store<u32>(vm + VM_WRITE_TRACKING, 1); // release: regions and queue first
}

/** Give an existing slot its zeroed write-tracking region (before kvm_page_track_enable). */
export function kvm_page_track_alloc_slot(slot: usize, region: usize): void {
  atomic.store<u32>(slot + SLOT_WRITE_TRACK, <u32>region);
}

/** Registered notifiers: the host keeps the list, the core only whether it is empty. */
export function kvm_page_track_set_notifiers(vm: usize, count: u32): void {
  atomic.store<u32>(vm + VM_TRACK_NOTIFIERS, count);
}

