// dirty_bitmap — per-slot dirty bitmaps: set, KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG
// (virt/kvm/kvm_main.c kvm_get_dirty_log_protect / kvm_clear_dirty_log_protect,
//  arch/x86/kvm/mmu/mmu.c kvm_arch_mmu_enable_log_dirty_pt_masked).
//
//   live bitmap   W u64, bit p = page p; set by vCPUs with atomic or, taken by GET with
//                 atomic xchg (classic) or by CLEAR with atomic and-not
//   summary       S u64, bit w = "live word w may be non-zero"
//   second        W u64 scratch, where a classic GET leaves the words it took
//   scratch list  the summary words a GET touched, so the host copies only those
//
// Invariants:
//   - A writer sets the live bit first and the summary bit second. A harvester clears a
//     summary bit before it exchanges the words under it. So a set live bit always has its
//     summary bit set, or is taken by the harvest in progress: no bit is skipped for good.
//   - Between calls the second bitmap is all zero (kvm_dirty_log_done re-zeroes what a GET
//     left there, CLEAR consumes what the host copied in).
//   - A page is re-armed (write-protected, or D cleared under PML) only after its bit has
//     left the live bitmap, and under mmu_lock for write; one TLB flush per call, after.
import { fail } from "./errno";
import {
  ERR_CLEAR_FIRST,
  ERR_CLEAR_RANGE,
  ERR_LOG_SLOT,
  ERR_RING_MODE,
  ERR_SLOT_ID,
  EINVAL,
  ENOENT,
  ENXIO,
  KVM_NR_AS,
  KVM_USER_MEM_SLOTS,
  SLOT_BASE_GFN,
  SLOT_BITMAP,
  SLOT_NPAGES,
  VM_PML,
} from "./layout";
import {
  manual_protect,
  manual_protect_and_init_set,
  slot_ptr,
  slot_scratch,
  slot_second,
  slot_summary,
  slot_summary_words,
  slot_words,
  use_dirty_bitmap,
} from "./kvm_host";
import { write_lock, write_unlock } from "./mmu_lock";
import {
  kvm_arch_mmu_enable_log_dirty_pt_masked,
  kvm_mmu_clear_dirty_pt_masked,
  kvm_mmu_dirty_log_bit,
  kvm_mmu_reprotect_begin,
  kvm_tdp_mmu_clear_dirty_pt_masked,
} from "./mmu";
import { is_shadow_mmu } from "./shadow";
import { kvm_get_vcpu, kvm_nr_vcpus, kvm_vcpu_kick } from "./vcpu";
import { flush_remote_tlbs_dirty_log } from "./tlb";

/** set_bit_le(rel, slot->dirty_bitmap), then the summary bit. */
export function bitmap_set(slot: usize, rel: u64): void {
  const bitmap = <usize>load<u32>(slot + SLOT_BITMAP);
  const word = rel >> 6;
  const wp = bitmap + <usize>(word << 3);
  const bit = (<u64>1) << (rel & 63);
  if ((load<u64>(wp) & bit) == 0) atomic.or<u64>(wp, bit);
  const sp = slot_summary(slot) + <usize>((word >> 6) << 3);
  const sbit = (<u64>1) << (word & 63);
  if ((atomic.load<u64>(sp) & sbit) == 0) atomic.or<u64>(sp, sbit);
}

/** Common checks of GET and CLEAR (spec §2.3); returns the slot or -errno. */
function dirty_log_slot(vm: usize, slot_id: u32): isize {
  if (!use_dirty_bitmap(vm)) return fail(vm, ENXIO, ERR_RING_MODE);
  const as_id = slot_id >> 16;
  const id = slot_id & 0xffff;
  if (as_id >= KVM_NR_AS || id >= KVM_USER_MEM_SLOTS) return fail(vm, EINVAL, ERR_SLOT_ID);
  const s = slot_ptr(vm, as_id, id);
  if (load<u32>(s + SLOT_BITMAP) == 0) return fail(vm, ENOENT, ERR_LOG_SLOT); // no slot, logging off, or ring-only
  return <isize>s;
}

/**
 * KVM_GET_DIRTY_LOG. Returns the number of scratch-list entries (summary words) whose
 * 64-word chunks hold the result, or -errno. Classic mode: the words are moved into the
 * second bitmap and their pages re-armed; manual-protect mode: nothing changes and the
 * chunks are to be read from the live bitmap. `can_block`: the calling thread may sleep
 * while it waits for the TLB flush (see tlb.ts); likewise for CLEAR, reset, memslots.
 */
export function kvm_get_dirty_log(vm: usize, slot_id: u32, can_block: u32): i32 {
  const r = dirty_log_slot(vm, slot_id);
  if (r < 0) return <i32>r;
  const s = <usize>r;
  const as_id = slot_id >> 16;
  kvm_arch_sync_dirty_log(vm);
  const summary = slot_summary(s);
  const nsum = <usize>slot_summary_words(s);
  const scratch = slot_scratch(s);
  let count: i32 = 0;
  if (manual_protect(vm)) {
    for (let i: usize = 0; i < nsum; i++) {
      if (load<u64>(summary + (i << 3)) != 0) { store<u32>(scratch + ((<usize>count) << 2), <u32>i); count++; }
    }
    return count;
  }
  const live = <usize>load<u32>(s + SLOT_BITMAP);
  const second = slot_second(s);
  // what enable_log_dirty_pt_masked decides per call, decided once: without INITIALLY_SET
  // (nothing huge to split) a word's pages go straight to kvm_mmu_clear_dirty_pt_masked, on
  // the TDP MMU to its TDP part with the bit to clear (W, or D under PML)
  const init_set = manual_protect_and_init_set(vm);
  const tdp_direct = !init_set && !is_shadow_mmu(vm);
  const bit = kvm_mmu_dirty_log_bit(vm);
  const base_gfn = load<u64>(s + SLOT_BASE_GFN);
  write_lock(vm);
  kvm_mmu_reprotect_begin(vm);
  for (let i: usize = 0; i < nsum; i++) {
    const sp = summary + (i << 3);
    if (load<u64>(sp) == 0) continue; // fast skip of empty regions
    let bits = atomic.xchg<u64>(sp, 0);
    let took = false;
    if (tdp_direct) {
      took = get_dirty_log_chunk_tdp(vm, as_id, live + (i << 9), second - live, bits, base_gfn + ((<u64>i) << 12), bit);
    } else {
      while (bits != 0) {
        const w = (i << 6) + <usize>ctz<u64>(bits);
        bits &= bits - 1;
        const wp = live + (w << 3);
        if (load<u64>(wp) == 0) continue;
        const mask = atomic.xchg<u64>(wp, 0);
        if (mask == 0) continue;
        store<u64>(second + (w << 3), mask);
        if (init_set) kvm_arch_mmu_enable_log_dirty_pt_masked(vm, s, as_id, (<u64>w) << 6, mask);
        else kvm_mmu_clear_dirty_pt_masked(vm, s, as_id, base_gfn + ((<u64>w) << 6), mask);
        took = true;
      }
    }
    if (took) { store<u32>(scratch + ((<usize>count) << 2), <u32>i); count++; }
  }
  write_unlock(vm);
  if (count > 0) flush_remote_tlbs_dirty_log(vm, can_block != 0);
  return count;
}

/**
 * kvm_get_dirty_log's loop over the words of one summary word (`bits`) on the TDP MMU
 * without INITIALLY_SET: the same steps, each word's pages straight to the TDP re-protection.
 * `wp0`: the chunk's first live word; `delta`: second bitmap - live bitmap; `gfn0`: the
 * chunk's first gfn. A function of its own, so that its loop keeps its values in registers
 * (GET 1 %: 2622 words with one bit each).
 */
function get_dirty_log_chunk_tdp(vm: usize, as_id: u32, wp0: usize, delta: usize, bits: u64, gfn0: u64, bit: u64): bool {
  let took = false;
  while (bits != 0) {
    const b = <usize>ctz<u64>(bits);
    bits &= bits - 1;
    const wp = wp0 + (b << 3);
    if (load<u64>(wp) == 0) continue;
    const mask = atomic.xchg<u64>(wp, 0);
    if (mask == 0) continue;
    store<u64>(wp + delta, mask);
    kvm_tdp_mmu_clear_dirty_pt_masked(vm, as_id, gfn0 + ((<u64>b) << 6), mask, bit);
    took = true;
  }
  return took;
}

/** After the host copied a classic GET's chunks out: re-zero them in the second bitmap. */
export function kvm_dirty_log_done(vm: usize, slot_id: u32, count: i32): void {
  const s = slot_ptr(vm, slot_id >> 16, slot_id & 0xffff);
  if (manual_protect(vm)) return;
  const second = slot_second(s);
  const scratch = slot_scratch(s);
  const words = <usize>slot_words(s);
  for (let k: usize = 0; k < <usize>count; k++) {
    const w0 = (<usize>load<u32>(scratch + (k << 2))) << 6;
    const n = words - w0 < 64 ? words - w0 : 64;
    memory.fill(second + (w0 << 3), 0, n << 3);
  }
}

/**
 * Checks of KVM_CLEAR_DIRTY_LOG in the kernel's order (spec §2.5): ENXIO, EINVAL for the
 * id, EINVAL for an unaligned first_page, ENOENT, EINVAL for the range. 0 if accepted.
 */
export function kvm_clear_dirty_log_check(vm: usize, slot_id: u32, first: u64, num: u64): i32 {
  if (!use_dirty_bitmap(vm)) return fail(vm, ENXIO, ERR_RING_MODE);
  if (slot_id >> 16 >= KVM_NR_AS || (slot_id & 0xffff) >= KVM_USER_MEM_SLOTS) return fail(vm, EINVAL, ERR_SLOT_ID);
  if ((first & 63) != 0) return fail(vm, EINVAL, ERR_CLEAR_FIRST);
  const r = dirty_log_slot(vm, slot_id);
  if (r < 0) return <i32>r;
  const npages = load<u64>(<usize>r + SLOT_NPAGES);
  if (first > npages || num > npages - first || (num < npages - first && (num & 63) != 0)) {
    return fail(vm, EINVAL, ERR_CLEAR_RANGE);
  }
  kvm_arch_sync_dirty_log(vm);
  return 0;
}

/**
 * KVM_CLEAR_DIRTY_LOG after the check passed and the host copied the user's bitmap into
 * the second bitmap at word first/64. Clears (and re-arms) only bits that were set;
 * re-zeroes the second-bitmap words it consumed.
 */
export function kvm_clear_dirty_log(vm: usize, slot_id: u32, first: u64, num: u64, can_block: u32): void {
  const as_id = slot_id >> 16;
  const s = slot_ptr(vm, as_id, slot_id & 0xffff);
  const live = <usize>load<u32>(s + SLOT_BITMAP);
  const second = slot_second(s);
  const w0 = <usize>(first >> 6);
  const n = <usize>((num + 63) >> 6);
  let flush = false;
  write_lock(vm);
  kvm_mmu_reprotect_begin(vm);
  for (let w = w0; w < w0 + n; w++) {
    const up = second + (w << 3);
    const user = load<u64>(up);
    if (user == 0) continue;
    store<u64>(up, 0);
    const mask = atomic.and<u64>(live + (w << 3), ~user) & user;
    if (mask == 0) continue;
    flush = true;
    kvm_arch_mmu_enable_log_dirty_pt_masked(vm, s, as_id, (<u64>w) << 6, mask);
  }
  write_unlock(vm);
  if (flush) flush_remote_tlbs_dirty_log(vm, can_block != 0);
}

/** Where the host finds GET's chunks: the live bitmap (manual protect) or the second one. */
export function kvm_dirty_log_source(vm: usize, slot_id: u32): usize {
  const s = slot_ptr(vm, slot_id >> 16, slot_id & 0xffff);
  return manual_protect(vm) ? <usize>load<u32>(s + SLOT_BITMAP) : slot_second(s);
}

/** The scratch list of the last GET (u32 summary-word indices). */
export function kvm_dirty_log_scratch(vm: usize, slot_id: u32): usize {
  return slot_scratch(slot_ptr(vm, slot_id >> 16, slot_id & 0xffff));
}

/** Where the host copies CLEAR's user bitmap: the second bitmap. */
export function kvm_dirty_log_second(vm: usize, slot_id: u32): usize {
  return slot_second(slot_ptr(vm, slot_id >> 16, slot_id & 0xffff));
}

/**
 * kvm_arch_sync_dirty_log: with PML, kick every vCPU so that its logged pages reach the
 * log at its exit. The kick does not wait: a vCPU in guest mode may still be draining when
 * GET returns (as in the kernel); a vCPU outside KVM_RUN has already drained.
 */
export function kvm_arch_sync_dirty_log(vm: usize): void {
  if (load<u32>(vm + VM_PML) == 0) return;
  const n = kvm_nr_vcpus(vm);
  for (let i: u32 = 0; i < n; i++) kvm_vcpu_kick(kvm_get_vcpu(vm, i));
}
