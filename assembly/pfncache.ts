// pfncache — gfn_to_pfn_cache (virt/kvm/pfncache.c, spec §6.2): KVM's cached mapping of
// ONE guest page, through which it writes guest memory from any thread (vCPU threads and
// the host's), kept coherent with memslot changes (generation) and with host-side
// changes to the page (the mmu notifier, mmu_notifier.ts).
//
// A cache is a GPC_SIZE record in the shared memory (layout.ts GPC_*), on kvm->gpc_list
// while active. Two ways in: gpa-based (kvm_gpc_activate: gpa → memslot → uhva → page,
// re-resolved when the AS-0 memslot generation changes) or hva-based
// (kvm_gpc_activate_hva: a bare host address, gpa = INVALID_GPA, no generation check).
// Host addresses: uhva is the VMM's address (the slot's hva + offset); khva is where the
// bytes are in this memory (the slot's backing + offset, 0 for an unbacked slot, whose
// bytes are dropped).
//
// Usage protocol (kvm_gpc_write below, and the Xen runstate update): take gpc->lock for
// read; while !kvm_gpc_check: drop it, kvm_gpc_refresh (which may fault the host page in
// and sleep, so never under the lock), take it again; use khva; mark the page dirty; drop.
// The cache never marks pages dirty itself (kvm_gpc_mark_dirty_in_slot is the writer's).
//
// Invariants:
//   - valid ⇒ active, uhva resolved, the host page exists, and no invalidation of uhva's
//     page has started since the refresh that set valid: the notifier clears valid under
//     gpc->lock (write) before it zaps anything (gfn_to_pfn_cache_invalidate_start);
//   - a refresh sets valid only if no invalidation was active and none ended since it read
//     mmu_invalidate_seq (hva_to_pfn_retry), so it never publishes a stale page;
//   - refreshes are serialized by refresh_lock; gpc->lock is never held while a refresh
//     resolves the page (that may run an invalidation, which takes gpc->lock for write);
//   - a cache is linked on the list before it becomes active and unlinked after it stops
//     being active, so an active cache is always reachable by the notifier.
import {
  EAGAIN,
  EFAULT,
  EINVAL,
  EIO,
  GPC_ACTIVE,
  GPC_GENERATION,
  GPC_GPA,
  GPC_KHVA,
  GPC_LOCK,
  GPC_MEMSLOT,
  GPC_NEXT,
  GPC_PFN_OK,
  GPC_REFRESH_LOCK,
  GPC_SIZE,
  GPC_UHVA,
  GPC_VALID,
  GPC_VM,
  SLOT_ACTIVE,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  SLOT_HVA,
  SLOT_NPAGES,
  VM_GEN,
  VM_GPC_LIST,
  VM_GPC_LOCK,
  VM_GPC_RETRIES,
  VM_MMU_INVALIDATE_SEQ,
  VM_MN_ACTIVE_INVALIDATE,
  VM_NR_GPC_INVALIDATED,
} from "./layout";
import { mark_page_dirty_in_slot } from "./mark_dirty";
import { memslot_by_hva, memslot_lookup } from "./kvm_host";
import { host_fault_in } from "./mmu_notifier";
import { rw_read_lock, rw_read_trylock, rw_read_unlock, rw_write_lock, rw_write_unlock, spin_lock, spin_unlock } from "./rwlock";

/** INVALID_GPA (a cache activated on a bare host address). */
export const INVALID_GPA: u64 = 0xffff_ffff_ffff_ffff;
/** KVM_HVA_ERR_BAD. */
export const HVA_ERR_BAD: u64 = 0xffff_ffff_ffff_ffff;

@inline function as0_generation(vm: usize): u64 {
  return atomic.load<u64>(vm + VM_GEN);
}

/** kvm_gpc_is_valid_len: the access must fit in the cached page. */
@inline function valid_len(gpa: u64, uhva: u64, len: u64): bool {
  const offset = gpa == INVALID_GPA ? uhva & 0xfff : gpa & 0xfff;
  return offset + len <= 4096;
}

/** kvm_gpc_init: an inactive cache of `vm`. */
export function kvm_gpc_init(vm: usize, gpc: usize): void {
  memory.fill(gpc, 0, GPC_SIZE);
  store<u32>(gpc + GPC_VM, <u32>vm);
  store<u64>(gpc + GPC_GPA, INVALID_GPA);
  store<u64>(gpc + GPC_UHVA, HVA_ERR_BAD);
}

/** kvm_gpc_check (gpc->lock held for read): may `len` bytes from the cached address be used now? */
export function kvm_gpc_check(gpc: usize, len: u64): bool {
  const vm = <usize>load<u32>(gpc + GPC_VM);
  if (atomic.load<u32>(gpc + GPC_ACTIVE) == 0) return false;
  const gpa = load<u64>(gpc + GPC_GPA);
  if (gpa != INVALID_GPA && load<u64>(gpc + GPC_GENERATION) != as0_generation(vm)) return false;
  const uhva = load<u64>(gpc + GPC_UHVA);
  if (uhva == HVA_ERR_BAD) return false;
  if (!valid_len(gpa, uhva, len)) return false;
  return atomic.load<u32>(gpc + GPC_VALID) != 0;
}

/** kvm_gpc_check under gpc->lock (read), for the host's `check()`. */
export function kvm_gpc_check_locked(gpc: usize, len: u32): bool {
  rw_read_lock(gpc + GPC_LOCK);
  const ok = kvm_gpc_check(gpc, <u64>len);
  rw_read_unlock(gpc + GPC_LOCK);
  return ok;
}

/**
 * hva_to_pfn_retry (refresh_lock held, gpc->lock held for write on entry and on return):
 * resolve uhva to its host page — faulting it in for writing, which may run an mmu
 * notifier invalidation (copy-on-write) — with gpc->lock dropped, until no invalidation
 * raced the lookup.
 */
function hva_to_pfn_retry(vm: usize, gpc: usize, can_block: bool): i32 {
  const lock = gpc + GPC_LOCK;
  atomic.store<u32>(gpc + GPC_VALID, 0);
  let khva_page: usize = 0;
  let seq: u64 = 0;
  let tries: u32 = 0;
  do {
    if (tries++ != 0) atomic.add<u32>(vm + VM_GPC_RETRIES, 1);
    seq = atomic.load<u64>(vm + VM_MMU_INVALIDATE_SEQ);
    rw_write_unlock(lock);
    const uhva = load<u64>(gpc + GPC_UHVA) & ~(<u64>0xfff);
    let slot = <usize>load<u32>(gpc + GPC_MEMSLOT);
    if (slot == 0) slot = memslot_by_hva(vm, uhva);
    // the slot must still exist and hold uhva (a DELETE racing this refresh invalidated
    // the cache and bumped the sequence: the loop comes back here and fails)
    if (slot == 0 || load<u32>(slot + SLOT_ACTIVE) == 0 || uhva < load<u64>(slot + SLOT_HVA) || uhva - load<u64>(slot + SLOT_HVA) >= load<u64>(slot + SLOT_NPAGES) << 12) {
      rw_write_lock(lock);
      return -EFAULT;
    }
    // "we always request a writeable mapping": the host page comes into existence
    const rel = (uhva - load<u64>(slot + SLOT_HVA)) >> 12;
    host_fault_in(vm, slot, rel, 1, can_block);
    const backing = <usize>load<u32>(slot + SLOT_BACKING);
    khva_page = backing == 0 ? 0 : backing + (<usize>rel << 12);
    rw_write_lock(lock);
  } while (atomic.load<u32>(vm + VM_MN_ACTIVE_INVALIDATE) != 0 || atomic.load<u64>(vm + VM_MMU_INVALIDATE_SEQ) != seq);
  const offset = <usize>(load<u64>(gpc + GPC_UHVA) & 0xfff);
  store<u32>(gpc + GPC_KHVA, khva_page == 0 ? 0 : <u32>(khva_page + offset));
  store<u32>(gpc + GPC_PFN_OK, 1);
  atomic.store<u32>(gpc + GPC_VALID, 1);
  return 0;
}

/** __kvm_gpc_refresh (refresh_lock held): exactly one of gpa and uhva is valid. */
function gpc_refresh(vm: usize, gpc: usize, gpa: u64, uhva: u64, can_block: bool): i32 {
  if ((gpa == INVALID_GPA) == (uhva == HVA_ERR_BAD)) return -EINVAL;
  const lock = gpc + GPC_LOCK;
  rw_write_lock(lock);
  if (load<u32>(gpc + GPC_ACTIVE) == 0) {
    rw_write_unlock(lock);
    return -EINVAL;
  }
  const old_khva = load<u32>(gpc + GPC_KHVA) & ~0xfff;
  const old_uhva = load<u64>(gpc + GPC_UHVA) == HVA_ERR_BAD ? HVA_ERR_BAD : load<u64>(gpc + GPC_UHVA) & ~(<u64>0xfff);
  let hva_change = false;
  let page_offset: u64;
  let ret: i32 = 0;
  if (gpa == INVALID_GPA) {
    page_offset = uhva & 0xfff;
    store<u64>(gpc + GPC_GPA, INVALID_GPA);
    store<u32>(gpc + GPC_MEMSLOT, 0);
    store<u64>(gpc + GPC_UHVA, uhva & ~(<u64>0xfff));
    hva_change = (uhva & ~(<u64>0xfff)) != old_uhva;
  } else {
    page_offset = gpa & 0xfff;
    const gen = as0_generation(vm);
    if (load<u64>(gpc + GPC_GPA) != gpa || load<u64>(gpc + GPC_GENERATION) != gen || old_uhva == HVA_ERR_BAD) {
      const gfn = gpa >> 12;
      store<u64>(gpc + GPC_GPA, gpa);
      store<u64>(gpc + GPC_GENERATION, gen);
      const slot = memslot_lookup(vm, 0, gfn);
      store<u32>(gpc + GPC_MEMSLOT, <u32>slot);
      const new_uhva = slot == 0 ? HVA_ERR_BAD : load<u64>(slot + SLOT_HVA) + ((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 12);
      store<u64>(gpc + GPC_UHVA, new_uhva);
      if (new_uhva == HVA_ERR_BAD) ret = -EFAULT;
      // even if the gpa or the generation changed, the hva may be the same
      hva_change = new_uhva != old_uhva;
    } else {
      store<u64>(gpc + GPC_UHVA, old_uhva);
    }
  }
  if (ret == 0) {
    store<u64>(gpc + GPC_UHVA, load<u64>(gpc + GPC_UHVA) + page_offset);
    if (atomic.load<u32>(gpc + GPC_VALID) == 0 || hva_change) {
      ret = hva_to_pfn_retry(vm, gpc, can_block);
    } else {
      // the page is still valid: only the offset inside it may have changed
      store<u32>(gpc + GPC_KHVA, old_khva == 0 ? 0 : old_khva + <u32>page_offset);
      rw_write_unlock(lock);
      return 0;
    }
  }
  if (ret != 0) {
    // the uhva, gpa and generation may still be right: keep them
    atomic.store<u32>(gpc + GPC_VALID, 0);
    store<u32>(gpc + GPC_PFN_OK, 0);
    store<u32>(gpc + GPC_KHVA, 0);
  }
  rw_write_unlock(lock);
  return ret;
}

/** __kvm_gpc_activate: link the cache if inactive, then refresh. */
function gpc_activate(vm: usize, gpc: usize, gpa: u64, uhva: u64, len: u64, can_block: bool): i32 {
  if (!valid_len(gpa, uhva, len)) return -EINVAL;
  spin_lock(gpc + GPC_REFRESH_LOCK);
  if (load<u32>(gpc + GPC_ACTIVE) == 0) {
    if (load<u32>(gpc + GPC_VALID) != 0) {
      spin_unlock(gpc + GPC_REFRESH_LOCK);
      return -EIO; // KVM_BUG_ON(gpc->valid)
    }
    spin_lock(vm + VM_GPC_LOCK);
    store<u32>(gpc + GPC_NEXT, load<u32>(vm + VM_GPC_LIST));
    store<u32>(vm + VM_GPC_LIST, <u32>gpc);
    spin_unlock(vm + VM_GPC_LOCK);
    // active only once reachable by the notifier
    rw_write_lock(gpc + GPC_LOCK);
    atomic.store<u32>(gpc + GPC_ACTIVE, 1);
    rw_write_unlock(gpc + GPC_LOCK);
  }
  const r = gpc_refresh(vm, gpc, gpa, uhva, can_block);
  spin_unlock(gpc + GPC_REFRESH_LOCK);
  return r;
}

/** kvm_gpc_activate: cache the page of `gpa` (AS 0) for accesses of `len` bytes from it. */
export function kvm_gpc_activate(gpc: usize, gpa: u64, len: u32, can_block: u32): i32 {
  if (gpa == INVALID_GPA) return -EINVAL;
  return gpc_activate(<usize>load<u32>(gpc + GPC_VM), gpc, gpa, HVA_ERR_BAD, <u64>len, can_block != 0);
}

/** kvm_gpc_activate_hva: cache the page of a bare host address (no memslot, no marking). */
export function kvm_gpc_activate_hva(gpc: usize, uhva: u64, len: u32, can_block: u32): i32 {
  if (uhva == HVA_ERR_BAD || uhva + <u64>len < uhva) return -EINVAL; // access_ok
  return gpc_activate(<usize>load<u32>(gpc + GPC_VM), gpc, INVALID_GPA, uhva, <u64>len, can_block != 0);
}

/** kvm_gpc_refresh: re-resolve the cached address (gpc->lock NOT held). */
export function kvm_gpc_refresh(gpc: usize, len32: u32, can_block: u32): i32 {
  const len = <u64>len32;
  const vm = <usize>load<u32>(gpc + GPC_VM);
  spin_lock(gpc + GPC_REFRESH_LOCK);
  const gpa = load<u64>(gpc + GPC_GPA);
  const uhva = load<u64>(gpc + GPC_UHVA);
  let r: i32;
  if (!valid_len(gpa, uhva, len)) {
    r = -EINVAL;
  } else {
    // a cache is gpa-based or hva-based, not both: a gpa-based one recomputes its hva
    r = gpc_refresh(vm, gpc, gpa, gpa == INVALID_GPA ? uhva : HVA_ERR_BAD, can_block != 0);
  }
  spin_unlock(gpc + GPC_REFRESH_LOCK);
  return r;
}

/** kvm_gpc_deactivate: stop using the page and leave the notifier's list. */
export function kvm_gpc_deactivate(gpc: usize): void {
  const vm = <usize>load<u32>(gpc + GPC_VM);
  spin_lock(gpc + GPC_REFRESH_LOCK);
  if (load<u32>(gpc + GPC_ACTIVE) != 0) {
    rw_write_lock(gpc + GPC_LOCK);
    atomic.store<u32>(gpc + GPC_ACTIVE, 0);
    atomic.store<u32>(gpc + GPC_VALID, 0);
    store<u32>(gpc + GPC_KHVA, 0);
    store<u32>(gpc + GPC_PFN_OK, 0);
    rw_write_unlock(gpc + GPC_LOCK);
    spin_lock(vm + VM_GPC_LOCK);
    let link = vm + VM_GPC_LIST;
    while (load<u32>(link) != 0 && <usize>load<u32>(link) != gpc) link = <usize>load<u32>(link) + GPC_NEXT;
    if (load<u32>(link) != 0) store<u32>(link, load<u32>(gpc + GPC_NEXT));
    store<u32>(gpc + GPC_NEXT, 0);
    spin_unlock(vm + VM_GPC_LOCK);
  }
  spin_unlock(gpc + GPC_REFRESH_LOCK);
}

/**
 * gfn_to_pfn_cache_invalidate_start (mmu notifier, before anything is zapped): every valid
 * cache whose uhva lies in [start, end) stops being valid (checked again under the write
 * lock: the cache may have changed meanwhile).
 */
export function gfn_to_pfn_cache_invalidate_start(vm: usize, start: u64, end: u64): void {
  spin_lock(vm + VM_GPC_LOCK);
  for (let gpc = <usize>load<u32>(vm + VM_GPC_LIST); gpc != 0; gpc = <usize>load<u32>(gpc + GPC_NEXT)) {
    const lock = gpc + GPC_LOCK;
    rw_read_lock(lock);
    if (!hit(gpc, start, end)) {
      rw_read_unlock(lock);
      continue;
    }
    rw_read_unlock(lock);
    rw_write_lock(lock);
    if (hit(gpc, start, end)) {
      atomic.store<u32>(gpc + GPC_VALID, 0);
      atomic.add<u32>(vm + VM_NR_GPC_INVALIDATED, 1);
    }
    rw_write_unlock(lock);
  }
  spin_unlock(vm + VM_GPC_LOCK);
}

@inline function hit(gpc: usize, start: u64, end: u64): bool {
  const uhva = load<u64>(gpc + GPC_UHVA);
  return atomic.load<u32>(gpc + GPC_VALID) != 0 && load<u32>(gpc + GPC_PFN_OK) != 0 && uhva >= start && uhva < end;
}

/**
 * The usage protocol around one access of `len` bytes at `offset` from the cached address:
 * lock, check, refresh outside the lock if needed (normal context) or give up with -EAGAIN
 * (atomic context: read_trylock, no refresh), then `write` (copy `len` bytes from `src`
 * into the page and mark it dirty: kvm_gpc_mark_dirty_in_slot, to `vcpu`'s ring when it
 * is the running vCPU, or through the VM's routing when 0) or read (copy to `src`).
 * Returns 0, -EAGAIN, or the refresh's -errno.
 */
export function gpc_access(gpc: usize, vcpu: usize, src: usize, offset: u64, len: u64, write: bool, atomic_ctx: bool, can_block: bool): i32 {
  const lock = gpc + GPC_LOCK;
  const need = offset + len;
  if (atomic_ctx) {
    if (!rw_read_trylock(lock)) return -EAGAIN;
    if (!kvm_gpc_check(gpc, need)) {
      rw_read_unlock(lock);
      return -EAGAIN;
    }
  } else {
    rw_read_lock(lock);
    while (!kvm_gpc_check(gpc, need)) {
      rw_read_unlock(lock);
      const r = kvm_gpc_refresh(gpc, <u32>need, can_block ? 1 : 0);
      if (r != 0) return r;
      rw_read_lock(lock);
    }
  }
  const khva = <usize>load<u32>(gpc + GPC_KHVA);
  if (write) {
    if (khva != 0) memory.copy(khva + <usize>offset, src, <usize>len);
    kvm_gpc_mark_dirty_in_slot(gpc, vcpu);
  } else if (khva != 0) {
    memory.copy(src, khva + <usize>offset, <usize>len);
  } else {
    memory.fill(src, 0, <usize>len);
  }
  rw_read_unlock(lock);
  return 0;
}

/** kvm_gpc_mark_dirty_in_slot (gpc->lock held): the cached gpa's page; nothing for an hva-based cache. */
export function kvm_gpc_mark_dirty_in_slot(gpc: usize, vcpu: usize): void {
  const slot = <usize>load<u32>(gpc + GPC_MEMSLOT);
  if (slot == 0) return;
  mark_page_dirty_in_slot(<usize>load<u32>(gpc + GPC_VM), vcpu, slot, load<u64>(gpc + GPC_GPA) >> 12);
}
