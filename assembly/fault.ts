// fault — the vCPU's guest-memory access path: one 8-byte guest store or load through the
// MMU (arch/x86/kvm/mmu/mmu.c fast_page_fault, kvm_tdp_mmu_map, make_spte).
//
//   store:  writable SPTE ──────────────────────────────► store, done
//           present, MMU-writable, W clear (1 1 0) ──────► fast fault: cmpxchg W on,
//                                                          mark dirty once (cmpxchg winner)
//           (huge 1 1 0 in a logged slot, 1 0 0, 0 0 0,
//            absent) ───────────────────────────────────► slow fault under mmu_lock (read):
//                                                          map at the allowed level, mark dirty
//                                                          if the new SPTE is W and the slot
//                                                          is logged (make_spte)
//           write-tracked gfn (page_track.ts) ───────────► slow fault maps it read-only
//                                                          (1 0 0), then the store is
//                                                          emulated: bytes written, page
//                                                          marked, notifier event queued
//                                                          (queue full: exit, not retired)
//           no slot / read-only slot ───────────────────► exit KVM_EXIT_MMIO
//   load:   present leaf ───────────────────────────────► load, no fault
//           absent ─────────────────────────────────────► slow fault: writable (and reported
//                                                          when logged) iff the host page
//                                                          exists; else the zero page, read-only
//
// Invariant: the store is performed only through an SPTE that was writable when loaded, and
// every W 0→1 transition this path makes in a logged slot reports the page before the store.
import {
  EFAULT,
  EINVAL,
  IN_GUEST_MODE,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_EXIT_MMIO,
  PAGING_32BIT,
  PAGING_OFF,
  VCPU_CR3,
  VCPU_PAGING,
  VCPU_ROOT,
  VCPU_WALK,
  VM_RMAP_ITER,
  WALK_WRITABLE,
  SP_GFNS,
  KVM_EXIT_PAGE_TRACK_FULL,
  VM_EMULATED_WRITES,
  VM_TRACK_FULL_EXITS,
  KVM_MAX_GFN,
  VCPU_LAST_GPA,
  VCPU_LAST_SLOT,
  VCPU_READ_VALUE,
  VCPU_MODE,
  VCPU_PSC_TABLE,
  VCPU_PSC_TAG,
  VCPU_REQUESTS,
  KVM_MEM_READONLY,
  SLOT_ACTIVE,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  SLOT_FLAGS,
  SLOT_NPAGES,
  VCPU_AS,
  VCPU_EXIT_REASON,
  VCPU_FAST_FAULTS,
  VCPU_MMIO_GPA,
  VCPU_SLOW_FAULTS,
  VCPU_STORES,
} from "./layout";
import { pml_active, pml_flush, pml_log_write } from "./pml";
import { vcpu_check_exit_request, vcpu_enter_guest, vcpu_exit_guest } from "./x86";
import { mark_page_dirty_in_slot } from "./mark_dirty";
import { memslot_lookup, slot_host_present, slot_invalid, slot_logged } from "./kvm_host";
import { kvm_mmu_leaf_has_room, kvm_mmu_leaf_installed, kvm_mmu_map, kvm_mmu_max_mapping_level } from "./mmu";
import {
  gfn_to_rmap,
  is_shadow_mmu,
  kvm_mmu_load_root,
  kvm_mmu_track_write,
  kvm_mmu_unload_root,
  mmu_sync_children,
  is_obsolete_sp,
  kvm_mmu_remote_flush_or_zap,
  shadow_has_indirect_pages,
  shadow_pool_short_during_zap,
  mmu_try_to_unsync_pages,
  shadow_fetch,
  shadow_pte_pool,
  shadow_sync_one,
  sp_gfn_at,
  sptep_to_sp,
} from "./shadow";
import { pte_list_pool_has_room, pte_list_remove, rmap_zap_all } from "./rmap";
import { flush_remote_tlbs } from "./tlb";
import { read_lock, read_unlock, write_lock, write_unlock } from "./mmu_lock";
import { host_fault_in, mmu_invalidate_retry_gfn } from "./mmu_notifier";
import { gfn_is_write_tracked, page_track_reserve, page_track_write } from "./page_track";
import { SPTE_D, SPTE_M, SPTE_W, is_leaf, is_present, level_pages, make_leaf, spte_hpa } from "./spte";
import { tdp_walk, tdp_walk_from } from "./tdp";
import { tlb_fill, tlb_flush_local, tlb_lookup, tlb_on } from "./tlb";
import { guest_page_fault_exit, guest_walk, guest_walk_gpa } from "./guest_walk";
import { vcpu_can_block, vcpu_load, vcpu_put } from "./vcpu";

/** slow_fault's verdict for a write to a write-tracked gfn: emulate it (RET_PF_EMULATE). */
const RET_PF_EMULATE: u32 = 0xffff_ffff;

@inline function host_addr(spte: u64, level: u32, gpa: u64): usize {
  const hpa = spte_hpa(spte);
  if (hpa == 0) return 0; // zero page / unbacked
  return <usize>(hpa + (gpa & ((level_pages(level) << 12) - 1)));
}

@inline function test_bit(bitmap: usize, n: u64): bool {
  return (load<u64>(bitmap + <usize>((n >> 6) << 3)) & ((<u64>1) << (n & 63))) != 0;
}

/** Set bits [from, from + count) of a u64 bitmap (concurrent setters allowed). */
export function set_bits(bitmap: usize, from: u64, count: u64): void {
  let n = from;
  const end = from + count;
  while (n < end) {
    const word = bitmap + <usize>((n >> 6) << 3);
    const lo = n & 63;
    const take = 64 - lo < end - n ? 64 - lo : end - n;
    const mask = take == 64 ? 0xffff_ffff_ffff_ffff : (((<u64>1) << take) - 1) << lo;
    if ((load<u64>(word) & mask) != mask) atomic.or<u64>(word, mask);
    n += take;
  }
}

function exit_mmio(vcpu: usize, gpa: u64): u32 {
  store<u64>(vcpu + VCPU_MMIO_GPA, gpa);
  return KVM_EXIT_MMIO;
}

/**
 * Slow page fault for gpa. Returns 0 when the caller should walk again (a mapping was
 * installed, or another thread changed the entry first), or an exit reason.
 */
@inline function fault_lock(vm: usize, shadow: bool): void {
  if (shadow) write_lock(vm);
  else read_lock(vm);
}

@inline function fault_unlock(vm: usize, shadow: bool): void {
  if (shadow) write_unlock(vm);
  else read_unlock(vm);
}

function slow_fault(vm: usize, vcpu: usize, as_id: u32, gpa: u64, write: bool): u32 {
  const gfn = gpa >> 12;
  // Under mmu_lock, the read side for the TDP MMU (SPTEs change by compare-and-swap), the
  // write side for the shadow MMU (its rmaps and shadow pages are lists): memslot updates
  // take the write side, so the slot found here stays valid until the SPTE is installed.
  const shadow = is_shadow_mmu(vm);
  fault_lock(vm, shadow);
  if (mmu_invalidate_retry_gfn(vm, gfn)) {
    fault_unlock(vm, shadow); // the host page is being invalidated: fault again after the end
    return 0;
  }
  const slot = memslot_lookup(vm, as_id, gfn);
  if (slot != 0 && slot_invalid(slot)) {
    fault_unlock(vm, shadow); // being deleted or moved (RET_PF_RETRY): fault again after
    return 0;
  }
  const readonly = slot != 0 && (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) != 0;
  if (slot == 0 || (write && readonly)) {
    fault_unlock(vm, shadow);
    return exit_mmio(vcpu, gpa);
  }
  const base = load<u64>(slot + SLOT_BASE_GFN);
  const present = slot_host_present(slot);
  // The host pfn lookup returns a writable page on a read fault when the page already
  // exists and is writable, so such a read installs a writable SPTE (and is logged).
  const host_writable = !readonly && (write || test_bit(present, gfn - base));
  // a read of a page with no host page maps the shared zero page (pfn 0), 4K, read-only
  const zero_page = !host_writable && !readonly;
  // make_spte → mmu_try_to_unsync_pages: a write-tracked gfn is mapped read-only (1 0 0),
  // and a write to it is emulated (page_fault_handle_page_track)
  const tracked = gfn_is_write_tracked(slot, gfn);
  const writable = host_writable && !tracked;
  // (the shadow MMU maps 4K only; dirtlog's host page is as large as the mapping, so its
  // host pages are 4K too: no THP)
  let level = shadow || zero_page ? 1 : kvm_mmu_max_mapping_level(slot, gfn);
  const w = kvm_mmu_leaf_has_room(vm, slot, gfn) ? kvm_mmu_map(vm, as_id, gfn, level) : 0;
  if (w == 0) {
    // out of page tables or descriptors; while a zap of everything is under way, what it
    // has yet to free is what is missing: fault again after it (shadow MMU)
    const retry = shadow && shadow_pool_short_during_zap(vm);
    fault_unlock(vm, shadow);
    return retry ? 0 : KVM_EXIT_INTERNAL_ERROR;
  }
  const p = w & ~7;
  level = <u32>(w & 7);
  const old = atomic.load<u64>(p);
  if (write && tracked && is_present(old) && is_leaf(old, level)) {
    fault_unlock(vm, shadow);
    return RET_PF_EMULATE; // a write to a present SPTE of a tracked gfn
  }
  if (is_present(old) && is_leaf(old, level) && (!write || (old & SPTE_W) != 0)) {
    fault_unlock(vm, shadow); // someone mapped it meanwhile: walk again
    return 0;
  }
  const span = level_pages(level);
  const frame = gfn & ~(span - 1);
  const backing = <u64>load<u32>(slot + SLOT_BACKING);
  const hpa = backing == 0 || zero_page ? 0 : backing + ((frame - base) << 12);
  // the zero page and read-only host pages are never host-writable: (0,0,0)
  const spte = make_leaf(hpa, level, writable, host_writable);
  if (atomic.cmpxchg<u64>(p, old, spte) == old) {
    if (!is_present(old)) kvm_mmu_leaf_installed(vm, slot, gfn, p, vcpu_can_block(vm, vcpu)); // rmap_add
    if (host_writable) set_bits(present, frame - base, span); // the host page (THP for huge) now exists
    if (writable && slot_logged(slot)) mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
    atomic.add<u64>(vcpu + VCPU_SLOW_FAULTS, 1);
  } else {
    fault_unlock(vm, shadow);
    return 0; // another thread changed the entry: walk again
  }
  fault_unlock(vm, shadow);
  return write && tracked ? RET_PF_EMULATE : 0;
}

/**
 * Emulate the guest's 8-byte store at gpa to a write-tracked page (x86_emulate_insn →
 * emulator_write_phys): kvm_vcpu_write_guest (the vCPU's address space; the host page is
 * faulted in; the page is marked dirty at every emulated write, into the vCPU's ring or
 * the slot's bitmap), then kvm_page_track_write (the notifiers' event). The SPTE stays
 * read-only. Returns 0 (the store retired) or KVM_EXIT_PAGE_TRACK_FULL (nothing written:
 * the event queue has no room; the store is retried after the owner thread drained it).
 * The vCPU is outside guest mode (emulation is a VM exit).
 */
function emulate_write(vm: usize, vcpu: usize, as_id: u32, gpa: u64, value: u64): u32 {
  const gfn = gpa >> 12;
  const slot = memslot_lookup(vm, as_id, gfn);
  if (slot == 0 || (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) != 0) return exit_mmio(vcpu, gpa);
  const rel = gfn - load<u64>(slot + SLOT_BASE_GFN);
  host_fault_in(vm, slot, rel, 1, vcpu_can_block(vm, vcpu)); // before the queue's lock: it may flush
  const reserved = page_track_reserve(vm);
  if (reserved < 0) {
    atomic.add<u32>(vm + VM_TRACK_FULL_EXITS, 1);
    return KVM_EXIT_PAGE_TRACK_FULL;
  }
  const backing = <usize>load<u32>(slot + SLOT_BACKING);
  if (backing != 0) store<u64>(backing + <usize>((rel << 12) | (gpa & 0xff8)), value);
  mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
  page_track_write(vm, reserved, as_id, gpa, value, 8);
  atomic.add<u64>(vm + VM_EMULATED_WRITES, 1);
  // kvm_mmu_track_write: the shadow MMU drops what the write changed in the guest tables
  // it shadows (a write-tracked page is one, unless only an external user tracks it)
  if (is_shadow_mmu(vm) && shadow_has_indirect_pages(vm)) {
    write_lock(vm);
    kvm_mmu_remote_flush_or_zap(vm, kvm_mmu_track_write(vm, gpa, 8), vcpu_can_block(vm, vcpu));
    write_unlock(vm);
  }
  return 0;
}

/** A u32 of the vCPU block the shadow-paged fault uses as its "flush due" flag. */
@inline function flush_flag(vcpu: usize): usize {
  return vcpu + VCPU_WALK + 44;
}

/**
 * The shadow MMU's page fault for a paged guest (FNAME(page_fault)): walk the guest's
 * tables (a guest page fault exits), then under mmu_lock for write fetch the shadow pages
 * down to the leaf and install it: writable iff the guest's gPTEs, the host page and the
 * gfn allow it — a write-tracked gfn (an upper-level guest table) stays read-only and its
 * write is emulated, a level-1 guest table goes unsync (mmu_try_to_unsync_pages). The leaf
 * goes on its gfn's rmap. Returns 0 (walk again), RET_PF_EMULATE, or an exit reason.
 */
function shadow_paged_fault(vm: usize, vcpu: usize, gva: u64, write: bool): u32 {
  if (!guest_walk(vm, vcpu, gva, write)) return guest_page_fault_exit();
  const gpa = guest_walk_gpa(vcpu);
  const gfn = gpa >> 12;
  const as_id = load<u32>(vcpu + VCPU_AS);
  write_lock(vm);
  // is_page_fault_stale: the root went obsolete (a zap); the vCPU drops it at guest entry
  // (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is pending) and faults again on a new one
  const root = <usize>load<u32>(vcpu + VCPU_ROOT);
  if (mmu_invalidate_retry_gfn(vm, gfn) || (root != 0 && is_obsolete_sp(vm, sptep_to_sp(vm, root)))) {
    write_unlock(vm);
    return 0;
  }
  const slot = memslot_lookup(vm, as_id, gfn);
  if (slot != 0 && slot_invalid(slot)) {
    write_unlock(vm);
    return 0;
  }
  const readonly = slot != 0 && (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) != 0;
  if (slot == 0 || (write && readonly)) {
    write_unlock(vm);
    return exit_mmio(vcpu, gpa);
  }
  const base = load<u64>(slot + SLOT_BASE_GFN);
  const present = slot_host_present(slot);
  const host_writable = !readonly && (write || test_bit(present, gfn - base));
  const zero_page = !host_writable && !readonly;
  const tracked = gfn_is_write_tracked(slot, gfn);
  store<u32>(flush_flag(vcpu), 0);
  const p = pte_list_pool_has_room(shadow_pte_pool(vm)) ? shadow_fetch(vm, vcpu, gva, flush_flag(vcpu)) : 0;
  if (p == 0) {
    kvm_mmu_remote_flush_or_zap(vm, load<u32>(flush_flag(vcpu)) != 0, vcpu_can_block(vm, vcpu));
    const retry = shadow_pool_short_during_zap(vm); // (see slow_fault)
    write_unlock(vm);
    return retry ? 0 : KVM_EXIT_INTERNAL_ERROR;
  }
  // The write creates the host page (copy-on-write of the zero page): as the mmu notifier
  // would, drop the gfn's other mappings — read-only maps of the zero page through other
  // gvas — so that they fault and see the new page.
  if (write && host_writable && !test_bit(present, gfn - base)) {
    if (rmap_zap_all(vm, shadow_pte_pool(vm), gfn_to_rmap(slot, gfn), vm + VM_RMAP_ITER)) store<u32>(flush_flag(vcpu), 1);
  }
  const sp = sptep_to_sp(vm, p);
  const i = <u32>((p & 0xfff) >> 3);
  const old = atomic.load<u64>(p);
  let r: u32 = 0;
  if (write && tracked && is_present(old) && sp_gfn_at(sp, i) == gfn) {
    r = RET_PF_EMULATE; // a write to a present SPTE of a write-tracked gfn
  } else if (!(is_present(old) && sp_gfn_at(sp, i) == gfn && (!write || (old & SPTE_W) != 0))) {
    let writable = host_writable && !tracked && load<u32>(vcpu + VCPU_WALK + WALK_WRITABLE) != 0;
    if (writable) writable = mmu_try_to_unsync_pages(vm, gfn); // a level-1 guest table goes unsync
    if (is_present(old)) {
      // the guest changed the gPTE (its page went unsync): the old gfn's rmap lets go
      const og = sp_gfn_at(sp, i);
      const os = memslot_lookup(vm, as_id, og);
      if (os != 0) pte_list_remove(shadow_pte_pool(vm), gfn_to_rmap(os, og), p);
      atomic.xchg<u64>(p, 0);
      store<u32>(flush_flag(vcpu), 1); // mmu_set_spte: another pfn, the old translation must go
    }
    const backing = <u64>load<u32>(slot + SLOT_BACKING);
    const hpa = backing == 0 || zero_page ? 0 : backing + ((gfn - base) << 12);
    store<u64>(<usize>load<u32>(sp + SP_GFNS) + (<usize>i << 3), gfn);
    atomic.store<u64>(p, make_leaf(hpa, 1, writable, host_writable));
    kvm_mmu_leaf_installed(vm, slot, gfn, p, vcpu_can_block(vm, vcpu)); // rmap_add
    if (host_writable) set_bits(present, gfn - base, 1);
    if (writable && slot_logged(slot)) mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
    atomic.add<u64>(vcpu + VCPU_SLOW_FAULTS, 1);
    if (write && tracked) r = RET_PF_EMULATE;
  }
  kvm_mmu_remote_flush_or_zap(vm, load<u32>(flush_flag(vcpu)) != 0, vcpu_can_block(vm, vcpu));
  write_unlock(vm);
  return r;
}

/**
 * One guest access of a paged guest on the shadow MMU: the CPU walks the shadow page table
 * from the vCPU's root by gva; a present leaf serves a read, a writable one a write (the
 * TLB caches it by gva), a (1 1 0) one takes the lockless fast path — the gfn to report
 * comes from the leaf's shadow page (kvm_mmu_page_get_gfn), as the kernel's does —, and
 * anything else the shadow-paged fault. `out` receives a read's value (0 for a write).
 */
function shadow_paged_access(vm: usize, vcpu: usize, gva: u64, write: bool, value: u64, out: usize): u32 {
  const as_id = load<u32>(vcpu + VCPU_AS);
  const tlb = tlb_on(vm);
  while (true) {
    const root = <usize>load<u32>(vcpu + VCPU_ROOT);
    if (root != 0) {
      const w = tdp_walk_from(root, gva >> 12);
      const p = w & ~7;
      const spte = atomic.load<u64>(p);
      if (is_present(spte) && (w & 7) == 1) {
        const host = host_addr(spte, 1, gva);
        if (!write) {
          store<u64>(out, host == 0 ? 0 : load<u64>(host));
          return 0;
        }
        if ((spte & SPTE_W) != 0) {
          if (tlb) tlb_fill(vcpu, as_id, gva >> 12, host & ~(<usize>0xfff));
          if (host != 0) store<u64>(host, value);
          return 0;
        }
        if ((spte & SPTE_M) != 0) {
          const gfn = sp_gfn_at(sptep_to_sp(vm, p), <u32>((p & 0xfff) >> 3));
          const slot = vcpu_memslot(vm, vcpu, as_id, gfn);
          if (slot != 0) {
            if (atomic.cmpxchg<u64>(p, spte, spte | SPTE_W | SPTE_D) == spte) {
              mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
              store<u64>(vcpu + VCPU_FAST_FAULTS, load<u64>(vcpu + VCPU_FAST_FAULTS) + 1);
            }
            const r = vcpu_enter_guest(vm, vcpu);
            if (r != 0) return r;
            continue;
          }
        }
      }
    }
    vcpu_exit_guest(vm, vcpu);
    let r = shadow_paged_fault(vm, vcpu, gva, write);
    if (r == RET_PF_EMULATE) {
      r = emulate_write(vm, vcpu, as_id, guest_walk_gpa(vcpu), value);
      if (r != 0) return r;
      atomic.store<u32>(vcpu + VCPU_MODE, IN_GUEST_MODE); // the store retired (see guest_write_tlb_miss)
      return 0;
    }
    if (r == 0) r = vcpu_enter_guest(vm, vcpu);
    if (r != 0) return r;
  }
  return 0;
}

/**
 * The memslot of gfn for the fast path, through a per-vCPU, per-address-space cache of the
 * last slot used. A cached slot is used only if it still exists and contains gfn; a slot
 * deleted or moved since was zapped first, so the fast path's cmpxchg on an SPTE loaded
 * before that fails and nothing is reported into a stale slot.
 */
@inline function vcpu_memslot(vm: usize, vcpu: usize, as_id: u32, gfn: u64): usize {
  const cache = vcpu + VCPU_LAST_SLOT + (<usize>as_id << 2);
  const s = <usize>load<u32>(cache);
  if (s != 0 && load<u32>(s + SLOT_ACTIVE) != 0 && gfn - load<u64>(s + SLOT_BASE_GFN) < load<u64>(s + SLOT_NPAGES)) {
    return s;
  }
  const found = memslot_lookup(vm, as_id, gfn);
  store<u32>(cache, <u32>found);
  return found;
}

/**
 * The guest executes one 8-byte store at gpa; the vCPU is in guest mode. Returns 0 when
 * the store retired (still in guest mode), or the exit reason (outside guest mode).
 * Faults are VM exits: the vCPU leaves guest mode, handles the fault and re-enters
 * (vcpu_enter_guest), where a soft-full ring exits before the store retires.
 */
export function guest_write(vm: usize, vcpu: usize, gpa: u64, value: u64): u32 {
  if (tlb_on(vm)) {
    const host = tlb_lookup(vcpu, load<u32>(vcpu + VCPU_AS), gpa >> 12);
    if (host != 0) {
      // a cached writable translation: no walk, no fault (even if the SPTE lost W since)
      if (host != 1) store<u64>(host + <usize>(gpa & 0xff8), value);
      return 0;
    }
  }
  return guest_write_tlb_miss(vm, vcpu, gpa, value);
}

/** guest_write after the TLB missed (kvm_run looks the TLB up inline, then calls this). */
export function guest_write_tlb_miss(vm: usize, vcpu: usize, addr: u64, value: u64): u32 {
  // a paged guest's address is a gva: the CPU walks the guest's tables first (with the TDP
  // MMU; the TLB caches gva → host page, as a TLB does), or the shadow page table by gva
  let gpa = addr;
  if (load<u32>(vcpu + VCPU_PAGING) != PAGING_OFF) {
    if (is_shadow_mmu(vm)) return shadow_paged_access(vm, vcpu, addr, true, value, 0);
    if (!guest_walk(vm, vcpu, addr, true)) {
      vcpu_exit_guest(vm, vcpu);
      return guest_page_fault_exit();
    }
    gpa = guest_walk_gpa(vcpu);
  }
  const tlb_gfn = addr >> 12;
  const gfn = gpa >> 12;
  // beyond the 48-bit guest physical space no slot exists, and the 4-level walk would
  // alias a low address: an access there is MMIO (KVM emulates it)
  if (gfn > KVM_MAX_GFN) return exit_mmio(vcpu, gpa);
  const as_id = load<u32>(vcpu + VCPU_AS);
  const tlb = tlb_on(vm);
  const psc_tag = ((gfn >> 9) << 1 | <u64>as_id) + 1;
  while (true) {
    let w: usize;
    if (tlb && load<u64>(vcpu + VCPU_PSC_TAG) == psc_tag) {
      w = (<usize>load<u32>(vcpu + VCPU_PSC_TABLE) + (<usize>(gfn & 511) << 3)) | 1;
    } else {
      w = tdp_walk(vm, as_id, gfn);
    }
    const p = w & ~7;
    const level = <u32>(w & 7);
    const spte = atomic.load<u64>(p);
    let r: u32 = 0;
    if (is_present(spte)) {
      if ((spte & SPTE_W) != 0) {
        if ((spte & SPTE_D) == 0 && level == 1 && pml_active(vm, vcpu) && !pml_log_write(vcpu, p, gpa)) {
          // PML-full exit: drain, re-enter, retry the store
          vcpu_exit_guest(vm, vcpu);
          r = vcpu_enter_guest(vm, vcpu);
          if (r != 0) return r;
          continue;
        }
        const host = host_addr(spte, level, gpa);
        if (tlb) {
          tlb_fill(vcpu, as_id, tlb_gfn, host & ~(<usize>0xfff));
          if (level == 1) {
            store<u64>(vcpu + VCPU_PSC_TAG, psc_tag);
            store<u32>(vcpu + VCPU_PSC_TABLE, <u32>(p & ~(<usize>0xfff)));
          }
        }
        if (host != 0) store<u64>(host, value);
        return 0;
      }
      if ((spte & SPTE_M) != 0) {
        // fast_page_fault: an EPT-violation exit handled without mmu_lock. The vCPU keeps
        // IN_GUEST_MODE meanwhile (it serves no request until it re-checks below), so a
        // flusher — a zap about to reuse page-table pages, a harvest about to return —
        // waits for this lockless walk exactly as it waits for a guest store; KVM announces
        // READING_SHADOW_PAGE_TABLES for the same purpose.
        pml_flush(vm, vcpu); // every exit drains the PML buffer
        const slot = vcpu_memslot(vm, vcpu, as_id, gfn);
        // refuses huge SPTEs of a dirty-logged slot (they are split by the slow path)
        if (slot != 0 && (level == 1 || !slot_logged(slot))) {
          const fixed = spte | SPTE_W | SPTE_D;
          const won = atomic.cmpxchg<u64>(p, spte, fixed) == spte;
          if (won) {
            mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
            store<u64>(vcpu + VCPU_FAST_FAULTS, load<u64>(vcpu + VCPU_FAST_FAULTS) + 1);
          }
          // re-entry: with no request pending the store retires through the SPTE just
          // fixed; otherwise serve them (a full ring exits before the store retires)
          if (won && atomic.load<u32>(vcpu + VCPU_REQUESTS) == 0) {
            const host = host_addr(fixed, level, gpa);
            if (tlb) tlb_fill(vcpu, as_id, tlb_gfn, host & ~(<usize>0xfff));
            if (host != 0) store<u64>(host, value);
            return 0;
          }
          r = vcpu_enter_guest(vm, vcpu);
          if (r != 0) return r;
          continue;
        }
      }
    }
    vcpu_exit_guest(vm, vcpu);
    r = slow_fault(vm, vcpu, as_id, gpa, true);
    if (r == RET_PF_EMULATE) {
      r = emulate_write(vm, vcpu, as_id, gpa, value);
      if (r != 0) return r;
      // The store retired. Back in guest mode without serving requests here: a request
      // now would exit with the store done and have it retried; the next store's check
      // (or the caller's exit) serves them, as after any retired store.
      atomic.store<u32>(vcpu + VCPU_MODE, IN_GUEST_MODE);
      return 0;
    }
    if (r == 0) r = vcpu_enter_guest(vm, vcpu);
    if (r != 0) return r;
  }
  return 0;
}

/** The guest executes one 8-byte load; like guest_write (no TLB: loads always walk). */
function guest_read(vm: usize, vcpu: usize, addr: u64, out: usize): u32 {
  let gpa = addr;
  if (load<u32>(vcpu + VCPU_PAGING) != PAGING_OFF) {
    if (is_shadow_mmu(vm)) return shadow_paged_access(vm, vcpu, addr, false, 0, out);
    if (!guest_walk(vm, vcpu, addr, false)) {
      vcpu_exit_guest(vm, vcpu);
      return guest_page_fault_exit();
    }
    gpa = guest_walk_gpa(vcpu);
  }
  if (gpa >> 12 > KVM_MAX_GFN) return exit_mmio(vcpu, gpa); // see guest_write
  const as_id = load<u32>(vcpu + VCPU_AS);
  while (true) {
    const w = tdp_walk(vm, as_id, gpa >> 12);
    const spte = atomic.load<u64>(w & ~7);
    if (is_present(spte)) {
      const host = host_addr(spte, <u32>(w & 7), gpa);
      store<u64>(out, host == 0 ? 0 : load<u64>(host));
      return 0;
    }
    vcpu_exit_guest(vm, vcpu);
    let r = slow_fault(vm, vcpu, as_id, gpa, false);
    if (r == 0) r = vcpu_enter_guest(vm, vcpu);
    if (r != 0) return r;
  }
  return 0;
}

@inline function exit_with(vcpu: usize, reason: u32): u32 {
  store<u32>(vcpu + VCPU_EXIT_REASON, reason);
  return reason;
}

/**
 * One 8-byte guest store at gpa (8-aligned), as a KVM_RUN whose guest executes exactly that
 * store. Returns 0 when it retired, else the exit reason (MMIO, DIRTY_RING_FULL — the store
 * did not retire; the retry faults again after the reset and is pushed again —, INTR), or
 * -EBUSY when another thread holds vcpu->mutex (nothing done). `tag`: see vcpu.ts.
 */
export function kvm_vcpu_write(vm: usize, vcpu: usize, tag: u32, gpa: u64, value: u64): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  let r = vcpu_check_exit_request(vcpu);
  if (r == 0) r = vcpu_enter_guest(vm, vcpu);
  if (r == 0) r = guest_write(vm, vcpu, gpa, value);
  if (r == 0) {
    store<u64>(vcpu + VCPU_STORES, load<u64>(vcpu + VCPU_STORES) + 1);
    store<u64>(vcpu + VCPU_LAST_GPA, gpa);
  }
  vcpu_exit_guest(vm, vcpu);
  exit_with(vcpu, r);
  vcpu_put(vcpu, loaded);
  return <i32>r;
}

/**
 * One 8-byte guest load at gpa; the value lands in VCPU_READ_VALUE (0 after an exit).
 * Returns the exit reason (0, MMIO, ring full, INTR) or -EBUSY (see kvm_vcpu_write).
 */
export function kvm_vcpu_read(vm: usize, vcpu: usize, tag: u32, gpa: u64): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  const out = vcpu + VCPU_READ_VALUE;
  store<u64>(out, 0);
  let r = vcpu_check_exit_request(vcpu);
  if (r == 0) r = vcpu_enter_guest(vm, vcpu);
  if (r == 0) r = guest_read(vm, vcpu, gpa, out);
  vcpu_exit_guest(vm, vcpu);
  exit_with(vcpu, r);
  vcpu_put(vcpu, loaded);
  return <i32>r;
}

/**
 * `count` (< 2^31) stores of `value` at gpa, gpa + stride, ... Stops at the first exit.
 * Returns the number of stores that retired, or -EBUSY (see kvm_vcpu_write).
 */
export function kvm_vcpu_write_strided(vm: usize, vcpu: usize, tag: u32, gpa: u64, stride: u64, count: u32, value: u64): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  let r = vcpu_check_exit_request(vcpu);
  if (r == 0) r = vcpu_enter_guest(vm, vcpu);
  let i: u32 = 0;
  for (; r == 0 && i < count; i++) {
    r = guest_write(vm, vcpu, gpa + (<u64>i) * stride, value);
    if (r != 0) break;
  }
  vcpu_exit_guest(vm, vcpu);
  store<u64>(vcpu + VCPU_STORES, load<u64>(vcpu + VCPU_STORES) + i);
  if (i > 0) store<u64>(vcpu + VCPU_LAST_GPA, gpa + (<u64>(i - 1)) * stride);
  exit_with(vcpu, r);
  vcpu_put(vcpu, loaded);
  return <i32>i;
}

/**
 * kvm_set_cr3 + the paging mode (vCPU context): `mode` PAGING_OFF (gva = gpa) or
 * PAGING_LONG with the 4-level tables at `cr3`. Loading CR3 flushes the vCPU's TLB (no
 * global pages are modelled). -EBUSY when another thread holds vcpu->mutex; -EINVAL for
 * a mode or CR3 the core does not take.
 */
export function kvm_set_cr3(vm: usize, vcpu: usize, tag: u32, cr3: u64, mode: u32): i32 {
  if (mode > PAGING_32BIT || (cr3 & 0xfff) != 0 || (mode == PAGING_32BIT && cr3 >> 32 != 0)) return -EINVAL;
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  if (is_shadow_mmu(vm)) {
    // kvm_mmu_new_pgd: let go of the old root, take the new CR3's (from the hash if
    // another vCPU or an earlier load made it) and sync what went unsync below it
    write_lock(vm);
    kvm_mmu_unload_root(vm, vcpu);
    store<u64>(vcpu + VCPU_CR3, cr3);
    store<u32>(vcpu + VCPU_PAGING, mode);
    store<u32>(flush_flag(vcpu), 0);
    const can_block = vcpu_can_block(vm, vcpu);
    if (mode != PAGING_OFF) {
      const root = kvm_mmu_load_root(vm, vcpu, flush_flag(vcpu));
      // kvm_mmu_sync_roots, after what loading the root zapped or write-protected is flushed
      kvm_mmu_remote_flush_or_zap(vm, load<u32>(flush_flag(vcpu)) != 0, can_block);
      if (root != 0) mmu_sync_children(vm, vcpu, sptep_to_sp(vm, root));
    } else {
      kvm_mmu_remote_flush_or_zap(vm, false, can_block); // an invalid root let go of
    }
    write_unlock(vm);
  } else {
    store<u64>(vcpu + VCPU_CR3, cr3);
    store<u32>(vcpu + VCPU_PAGING, mode);
  }
  tlb_flush_local(vcpu);
  vcpu_put(vcpu, loaded);
  return 0;
}

/** INVLPG (vCPU context): the vCPU's cached translation of gva goes. */
export function kvm_mmu_invlpg(vm: usize, vcpu: usize, tag: u32, gva: u64): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  const root = <usize>load<u32>(vcpu + VCPU_ROOT);
  if (is_shadow_mmu(vm) && root != 0) {
    // FNAME(invlpg) / kvm_mmu_invalidate_addr: an unsync leaf page syncs the gPTE of gva
    write_lock(vm);
    const w = tdp_walk_from(root, gva >> 12);
    if (!is_obsolete_sp(vm, sptep_to_sp(vm, root)) && (w & 7) == 1 && shadow_sync_one(vm, w & ~7)) {
      flush_remote_tlbs(vm, vcpu_can_block(vm, vcpu));
    }
    write_unlock(vm);
  }
  tlb_flush_local(vcpu); // (the model's TLB has no per-address invalidation)
  vcpu_put(vcpu, loaded);
  return 0;
}
