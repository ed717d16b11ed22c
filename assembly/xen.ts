// xen — the Xen runstate area (arch/x86/kvm/xen.c kvm_xen_vcpu_set_attr RUNSTATE_ADDR,
// kvm_xen_update_runstate, kvm_xen_update_runstate_guest; spec §6.3): a structure the guest
// places anywhere in its memory, which KVM rewrites at every scheduling change of the vCPU.
//
//   struct vcpu_runstate_info (64-bit guest, 0x30 bytes)   compat (32-bit guest, 0x2c bytes)
//     +0  int state                                          +0  int state
//     +8  u64 state_entry_time (bit 63: XEN_RUNSTATE_UPDATE)  +4  u64 state_entry_time
//     +16 u64 time[4] (ns per state)                         +12 u64 time[4]
//
// The area may cross a page boundary, even a memslot boundary: then two pfn caches hold it
// (VCPU_XEN_GPC1 on the first page, VCPU_XEN_GPC2 on the rest), both locked (gpc1 before
// gpc2, the only order anything takes them in) and checked before a byte is written.
//
// Invariants of an update (what a guest reader relies on):
//   - all or nothing: if either cache is invalid and cannot be refreshed here (atomic
//     context may not refresh; a contended lock there means give up), nothing is written;
//   - the byte holding XEN_RUNSTATE_UPDATE (the top byte of state_entry_time, in whichever
//     page it falls) is set before any other byte changes and cleared after all of them,
//     with a fence between each step: a guest that re-reads while the flag is set never
//     uses a torn structure;
//   - each page written is marked dirty once per update (gpc2's, then gpc1's), in the
//     vCPU's context (its ring).
import {
  GPC_GPA,
  GPC_KHVA,
  GPC_LOCK,
  VCPU_XEN_GPC1,
  VCPU_XEN_GPC2,
  VCPU_XEN_RS_BUF,
  VCPU_XEN_RS_COMPAT,
  VCPU_XEN_RS_ENTRY,
  VCPU_XEN_RS_GPA,
  VCPU_XEN_RS_SKIPPED,
  VCPU_XEN_RS_STATE,
  VCPU_XEN_RS_TIMES,
  VCPU_XEN_RS_UPDATES,
} from "./layout";
import { dirty_ring_publish } from "./dirty_ring";
import {
  INVALID_GPA,
  kvm_gpc_activate,
  kvm_gpc_check,
  kvm_gpc_deactivate,
  kvm_gpc_init,
  kvm_gpc_mark_dirty_in_slot,
  kvm_gpc_refresh,
} from "./pfncache";
import { rw_read_lock, rw_read_trylock, rw_read_unlock } from "./rwlock";
import { vcpu_load, vcpu_put } from "./vcpu";

export const RUNSTATE_running: u32 = 0;
export const RUNSTATE_runnable: u32 = 1;
export const RUNSTATE_blocked: u32 = 2;
export const RUNSTATE_offline: u32 = 3;
const XEN_RUNSTATE_UPDATE: u64 = (<u64>1) << 63;

@inline function area_len(vcpu: usize): u64 {
  return load<u32>(vcpu + VCPU_XEN_RS_COMPAT) != 0 ? 0x2c : 0x30;
}
@inline function times_ofs(vcpu: usize): u64 {
  return load<u32>(vcpu + VCPU_XEN_RS_COMPAT) != 0 ? 4 : 8;
}

/** The vCPU's two caches, made ready (inactive) when the vCPU is created. */
export function kvm_xen_init_vcpu(vm: usize, vcpu: usize): void {
  kvm_gpc_init(vm, vcpu + VCPU_XEN_GPC1);
  kvm_gpc_init(vm, vcpu + VCPU_XEN_GPC2);
  store<u64>(vcpu + VCPU_XEN_RS_GPA, INVALID_GPA);
  store<u32>(vcpu + VCPU_XEN_RS_STATE, RUNSTATE_offline);
}

function deactivate_both(vcpu: usize): void {
  kvm_gpc_deactivate(vcpu + VCPU_XEN_GPC1);
  kvm_gpc_deactivate(vcpu + VCPU_XEN_GPC2);
  store<u64>(vcpu + VCPU_XEN_RS_GPA, INVALID_GPA);
}

/**
 * KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR: place the area at gpa (INVALID_GPA: none), in the
 * 32-bit layout when `compat`. The first cache covers the rest of gpa's page, the second
 * (when the area does not fit) the remainder on the next page; then the current state is
 * written (normal context). vCPU context (`tag`); returns 0, -EBUSY, or the activation's
 * -errno (both caches are then inactive).
 */
export function kvm_xen_set_runstate_area(vcpu: usize, tag: u32, gpa: u64, compat: u32, can_block: u32): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  let r: i32 = 0;
  if (gpa == INVALID_GPA) {
    deactivate_both(vcpu);
  } else {
    store<u32>(vcpu + VCPU_XEN_RS_COMPAT, compat != 0 ? 1 : 0);
    const sz = area_len(vcpu);
    const sz1 = 4096 - (gpa & 0xfff); // how much fits in the first page
    r = kvm_gpc_activate(vcpu + VCPU_XEN_GPC1, gpa, <u32>sz1, can_block);
    if (r == 0) {
      if (sz1 >= sz) kvm_gpc_deactivate(vcpu + VCPU_XEN_GPC2);
      else r = kvm_gpc_activate(vcpu + VCPU_XEN_GPC2, gpa + sz1, <u32>(sz - sz1), can_block);
    }
    if (r != 0) {
      deactivate_both(vcpu);
    } else {
      store<u64>(vcpu + VCPU_XEN_RS_GPA, gpa);
      update_runstate_guest(vcpu, false, can_block != 0);
    }
  }
  dirty_ring_publish(vcpu);
  vcpu_put(vcpu, loaded);
  return r;
}

/**
 * kvm_xen_update_runstate: the vCPU enters `state` at time `now` (ns): the time since the
 * last change is added to the state it leaves, and the guest's copy is rewritten if an
 * area is set (atomic context when `atomic_ctx`, as for a vCPU being scheduled out).
 * vCPU context (`tag`). Returns 1 if the guest copy was written, 0 if there is no area or
 * the update gave up (atomic context, or a cache that could not be refreshed), -EBUSY.
 */
export function kvm_xen_update_runstate(vcpu: usize, tag: u32, state: u32, now: u64, atomic_ctx: u32, can_block: u32): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  const entry = load<u64>(vcpu + VCPU_XEN_RS_ENTRY);
  let current = load<u32>(vcpu + VCPU_XEN_RS_STATE);
  if (entry == 0) current = RUNSTATE_offline;
  const times = vcpu + VCPU_XEN_RS_TIMES + (<usize>current << 3);
  store<u64>(times, load<u64>(times) + (now > entry ? now - entry : 0));
  store<u32>(vcpu + VCPU_XEN_RS_STATE, state);
  store<u64>(vcpu + VCPU_XEN_RS_ENTRY, now);
  let r: i32 = 0;
  if (load<u64>(vcpu + VCPU_XEN_RS_GPA) != INVALID_GPA) r = update_runstate_guest(vcpu, atomic_ctx != 0, can_block != 0) ? 1 : 0;
  dirty_ring_publish(vcpu);
  vcpu_put(vcpu, loaded);
  return r;
}

/** Lock gpc (read) and make it usable for `len` bytes; false (unlocked) if it cannot be here. */
function lock_checked(gpc: usize, len: u64, atomic_ctx: bool, can_block: bool): bool {
  const lock = gpc + GPC_LOCK;
  if (atomic_ctx) {
    if (!rw_read_trylock(lock)) return false;
  } else {
    rw_read_lock(lock);
  }
  while (!kvm_gpc_check(gpc, len)) {
    rw_read_unlock(lock);
    if (atomic_ctx) return false; // cannot sleep here
    if (kvm_gpc_refresh(gpc, <u32>len, can_block ? 1 : 0) != 0) return false;
    rw_read_lock(lock);
  }
  return true;
}

/** kvm_xen_update_runstate_guest: write the structure, all or nothing. Returns whether it was written. */
function update_runstate_guest(vcpu: usize, atomic_ctx: bool, can_block: bool): bool {
  const gpc1 = vcpu + VCPU_XEN_GPC1;
  const gpc2 = vcpu + VCPU_XEN_GPC2;
  const user_len = area_len(vcpu);
  const ofs = times_ofs(vcpu);
  const page_off = load<u64>(gpc1 + GPC_GPA) & 0xfff;
  let len1 = user_len;
  let len2: u64 = 0;
  if (page_off + user_len >= 4096) {
    len1 = 4096 - page_off;
    len2 = user_len - len1;
  }
  while (true) {
    if (!lock_checked(gpc1, len1, atomic_ctx, can_block)) return skipped(vcpu);
    if (len2 == 0) break;
    // gpc1 then gpc2: nothing else holds both
    if (!atomic_ctx) {
      rw_read_lock(gpc2 + GPC_LOCK);
    } else if (!rw_read_trylock(gpc2 + GPC_LOCK)) {
      rw_read_unlock(gpc1 + GPC_LOCK);
      return skipped(vcpu);
    }
    if (kvm_gpc_check(gpc2, len2)) break;
    rw_read_unlock(gpc2 + GPC_LOCK);
    rw_read_unlock(gpc1 + GPC_LOCK);
    if (atomic_ctx) return skipped(vcpu);
    // activate, not refresh: the area may reach the second page only since the guest
    // changed layouts, and then the second cache was never set up
    if (kvm_gpc_activate(gpc2, load<u64>(gpc1 + GPC_GPA) + len1, <u32>len2, can_block ? 1 : 0) != 0) return skipped(vcpu);
    // gpc1's lock was dropped: check it again too
  }
  const khva1 = <usize>load<u32>(gpc1 + GPC_KHVA);
  const khva2 = len2 != 0 ? <usize>load<u32>(gpc2 + GPC_KHVA) : 0;
  // the byte that holds XEN_RUNSTATE_UPDATE, in whichever page it falls (0: unbacked)
  const flag_at = ofs + 7;
  const update_bit: usize = flag_at < len1 ? (khva1 == 0 ? 0 : khva1 + <usize>flag_at) : khva2 == 0 ? 0 : khva2 + <usize>(flag_at - len1);
  const entry = load<u64>(vcpu + VCPU_XEN_RS_ENTRY);
  if (update_bit != 0) atomic.store<u8>(update_bit, <u8>((entry | XEN_RUNSTATE_UPDATE) >> 56));
  smp_wmb(vcpu);
  // assemble the structure, then copy it (one or two pieces)
  const rs = vcpu + VCPU_XEN_RS_BUF;
  memory.fill(rs, 0, 48);
  store<u32>(rs, load<u32>(vcpu + VCPU_XEN_RS_STATE));
  store<u64>(rs + <usize>ofs, entry | XEN_RUNSTATE_UPDATE);
  memory.copy(rs + <usize>ofs + 8, vcpu + VCPU_XEN_RS_TIMES, 32);
  if (khva1 != 0) memory.copy(khva1, rs, <usize>len1);
  if (khva2 != 0) memory.copy(khva2, rs + <usize>len1, <usize>len2);
  smp_wmb(vcpu);
  if (update_bit != 0) atomic.store<u8>(update_bit, <u8>(entry >> 56));
  smp_wmb(vcpu);
  if (len2 != 0) {
    kvm_gpc_mark_dirty_in_slot(gpc2, vcpu);
    rw_read_unlock(gpc2 + GPC_LOCK);
  }
  kvm_gpc_mark_dirty_in_slot(gpc1, vcpu);
  rw_read_unlock(gpc1 + GPC_LOCK);
  atomic.add<u32>(vcpu + VCPU_XEN_RS_UPDATES, 1);
  return true;
}

/**
 * smp_wmb: a full barrier between the steps of an update (a seq-cst read-modify-write of
 * a word of this vCPU; binaryen rejects AssemblyScript's atomic.fence).
 */
@inline function smp_wmb(vcpu: usize): void {
  atomic.or<u32>(vcpu + VCPU_XEN_RS_UPDATES, 0);
}

@inline function skipped(vcpu: usize): bool {
  atomic.add<u32>(vcpu + VCPU_XEN_RS_SKIPPED, 1);
  return false;
}
