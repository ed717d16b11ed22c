// kvm_write — KVM's own accesses to guest memory through the memslots' host mappings
// (virt/kvm/kvm_main.c __kvm_write_guest_page, kvm_write_guest, kvm_vcpu_write_guest,
// the gfn_to_hva_cache functions; spec §6.1, §6.4), and the VMM's writes through its own
// mapping. No SPTE is involved: these writes are seen only because KVM marks the pages
// dirty (mark_dirty.ts routes the mark), and through copy-on-write (a host-side write
// to a page without a host page gives it one inside an mmu notifier invalidation, which
// zaps the guest's read-only zero-page mapping: mmu_notifier.ts host_fault_in).
//
// Whose write is it: a write in vCPU context (kvm_vcpu_write_guest, the caller holds
// vcpu->mutex) uses the vCPU's address space (SMRAM while in SMM) and its ring; a write in
// VM context (kvm_write_guest, vcpu = 0) uses address space 0 and the bitmap. A VM-context
// write may still have a running vCPU for the mark (kvm_get_running_vcpu): `mark_vcpu`.
//
// gfn_to_hva_cache (GHC_* records, layout.ts): the host address of a gpa range's first
// byte, for AS 0, valid for one memslot generation.
// Invariants: the generation is recorded before any check (a failed init is retried at the
// next generation change, never trusted); a range of more than one page keeps no memslot
// and takes the slow path (page by page, each marked); every cached write marks its page.
import {
  EFAULT,
  EINVAL,
  GHC_GENERATION,
  GHC_GPA,
  GHC_HVA,
  GHC_HVA_OK,
  GHC_LEN,
  GHC_MEMSLOT,
  KVM_MEM_READONLY,
  SLOT_ACTIVE,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  SLOT_FLAGS,
  SLOT_NPAGES,
  VCPU_AS,
  VM_GEN,
} from "./layout";
import { dirty_ring_publish } from "./dirty_ring";
import { mark_page_dirty_in_slot } from "./mark_dirty";
import { memslot_lookup, slot_ptr } from "./kvm_host";
import { host_fault_in } from "./mmu_notifier";
import { gpc_access } from "./pfncache";
import { vcpu_load, vcpu_put } from "./vcpu";

/**
 * __kvm_write_guest_page + kvm_write_guest: `len` bytes from `src` to gpa in address space
 * `as_id`, page by page; each page must be in a writable slot (-EFAULT stops the write,
 * earlier pages stay written), gets its host page (copy-on-write) and is marked dirty,
 * the mark routed with `mark_vcpu` as the running vCPU (0 = none).
 */
export function write_guest(vm: usize, mark_vcpu: usize, as_id: u32, gpa: u64, src: usize, len: u64, can_block: bool): i32 {
  let done: u64 = 0;
  while (true) {
    const g = gpa + done;
    const gfn = g >> 12;
    const offset = g & 0xfff;
    const n = 4096 - offset < len - done ? 4096 - offset : len - done;
    const slot = memslot_lookup(vm, as_id, gfn);
    if (slot == 0 || (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) != 0) return -EFAULT;
    const rel = gfn - load<u64>(slot + SLOT_BASE_GFN);
    host_fault_in(vm, slot, rel, 1, can_block);
    const backing = <usize>load<u32>(slot + SLOT_BACKING);
    if (backing != 0) memory.copy(backing + <usize>((rel << 12) | offset), src + <usize>done, <usize>n);
    mark_page_dirty_in_slot(vm, mark_vcpu, slot, gfn);
    done += n;
    if (done >= len) return 0;
  }
  return 0;
}

/** kvm_read_guest: `len` bytes from gpa (address space `as_id`) to `dst`; -EFAULT for a hole. */
export function read_guest(vm: usize, as_id: u32, gpa: u64, dst: usize, len: u64): i32 {
  let done: u64 = 0;
  while (done < len) {
    const g = gpa + done;
    const gfn = g >> 12;
    const offset = g & 0xfff;
    const n = 4096 - offset < len - done ? 4096 - offset : len - done;
    const slot = memslot_lookup(vm, as_id, gfn);
    if (slot == 0) return -EFAULT;
    const backing = <usize>load<u32>(slot + SLOT_BACKING);
    const rel = gfn - load<u64>(slot + SLOT_BASE_GFN);
    if (backing != 0) memory.copy(dst + <usize>done, backing + <usize>((rel << 12) | offset), <usize>n);
    else memory.fill(dst + <usize>done, 0, <usize>n);
    done += n;
  }
  return 0;
}

/**
 * kvm_write_guest / kvm_vcpu_write_guest of one 8-aligned u64 (the host's
 * vm/vcpu.kvmWriteGuest): as kvm_write_guest_bytes for one page.
 */
export function kvm_write_guest(vm: usize, vcpu: usize, tag: u32, gpa: u64, value: u64, can_block: u32): i32 {
  let loaded: i32 = 0;
  if (vcpu != 0) {
    loaded = vcpu_load(vcpu, tag);
    if (loaded < 0) return loaded;
  }
  const gfn = gpa >> 12;
  const slot = memslot_lookup(vm, vcpu != 0 ? load<u32>(vcpu + VCPU_AS) : 0, gfn);
  let r: i32 = -EFAULT;
  if (slot != 0 && (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) == 0) {
    const rel = gfn - load<u64>(slot + SLOT_BASE_GFN);
    host_fault_in(vm, slot, rel, 1, can_block != 0);
    const backing = <usize>load<u32>(slot + SLOT_BACKING);
    if (backing != 0) store<u64>(backing + <usize>((rel << 12) | (gpa & 0xff8)), value);
    mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
    r = 0;
  }
  if (vcpu != 0) {
    dirty_ring_publish(vcpu); // a push outside KVM_RUN: no exit will publish it
    vcpu_put(vcpu, loaded);
  }
  return r;
}

/**
 * The VMM wrote pages [first, first + count) of a slot through its own mapping: the host
 * pages now exist (copy-on-write where they did not, with the mmu notifier's zap of any
 * zero-page mapping). Nothing is reported dirty — KVM does not see userspace writes.
 * Returns -EINVAL for a missing slot or a bad range.
 */
export function memslot_host_touch(vm: usize, slot_id: u32, first: u64, count: u64, can_block: u32): i32 {
  const s = slot_ptr(vm, slot_id >> 16, slot_id & 0xffff);
  if (load<u32>(s + SLOT_ACTIVE) == 0) return -EINVAL;
  const npages = load<u64>(s + SLOT_NPAGES);
  if (first > npages || count > npages - first) return -EINVAL;
  host_fault_in(vm, s, first, count, can_block != 0);
  return 0;
}

// ---- gfn_to_hva_cache ----

/**
 * __kvm_gfn_to_hva_cache_init for AS 0: -EINVAL for an empty range that wraps (len 0 at a
 * page start), -EFAULT when some page of the range is not in a writable slot.
 */
export function kvm_gfn_to_hva_cache_init(vm: usize, ghc: usize, gpa: u64, len: u32): i32 {
  // the generation first, before any check
  store<u64>(ghc + GHC_GENERATION, atomic.load<u64>(vm + VM_GEN));
  store<u32>(ghc + GHC_HVA_OK, 0);
  const start = gpa >> 12;
  const end = (gpa + <u64>len - 1) >> 12;
  if (start > end) return -EINVAL;
  // a range over two memslots is still checked whole here
  let slot: usize = 0;
  for (let gfn = start; gfn <= end; ) {
    slot = memslot_lookup(vm, 0, gfn);
    if (slot == 0 || (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_READONLY) != 0) return -EFAULT;
    const avail = load<u64>(slot + SLOT_NPAGES) - (gfn - load<u64>(slot + SLOT_BASE_GFN));
    if (gfn + avail < gfn) break;
    gfn += avail;
  }
  if (start == end) {
    const backing = <usize>load<u32>(slot + SLOT_BACKING);
    const rel = start - load<u64>(slot + SLOT_BASE_GFN);
    store<u32>(ghc + GHC_HVA, backing == 0 ? 0 : <u32>(backing + <usize>((rel << 12) | (gpa & 0xfff))));
    store<u32>(ghc + GHC_MEMSLOT, <u32>slot);
  } else {
    store<u32>(ghc + GHC_HVA, 0);
    store<u32>(ghc + GHC_MEMSLOT, 0); // the slow path for cross-page accesses
  }
  store<u32>(ghc + GHC_HVA_OK, 1);
  store<u64>(ghc + GHC_GPA, gpa);
  store<u32>(ghc + GHC_LEN, len);
  return 0;
}

/** The checks common to cached reads and writes; 0 when the fast path may be used, 1 for the slow one. */
function ghc_ready(vm: usize, ghc: usize, offset: u64, len: u64): i32 {
  if (len + offset > <u64>load<u32>(ghc + GHC_LEN)) return -EINVAL; // WARN_ON_ONCE in the kernel
  if (atomic.load<u64>(vm + VM_GEN) != load<u64>(ghc + GHC_GENERATION)) {
    if (kvm_gfn_to_hva_cache_init(vm, ghc, load<u64>(ghc + GHC_GPA), load<u32>(ghc + GHC_LEN)) != 0) return -EFAULT;
  }
  if (load<u32>(ghc + GHC_HVA_OK) == 0) return -EFAULT;
  return load<u32>(ghc + GHC_MEMSLOT) == 0 ? 1 : 0;
}

/**
 * kvm_write_guest_offset_cached: `len` bytes from `src` at `offset` into the cached range.
 * The mark goes through mark_page_dirty_in_slot with `vcpu` as the running vCPU (taken
 * with `tag`: -EBUSY if another thread drives it), or none when 0.
 */
export function kvm_write_guest_offset_cached(vm: usize, vcpu: usize, tag: u32, ghc: usize, src: usize, offset32: u32, len32: u32, can_block: u32): i32 {
  const offset = <u64>offset32;
  const len = <u64>len32;
  let loaded: i32 = 0;
  if (vcpu != 0) {
    loaded = vcpu_load(vcpu, tag);
    if (loaded < 0) return loaded;
  }
  let r = ghc_ready(vm, ghc, offset, len);
  const gpa = load<u64>(ghc + GHC_GPA) + offset;
  if (r == 1) {
    r = write_guest(vm, vcpu, 0, gpa, src, len, can_block != 0);
  } else if (r == 0) {
    const slot = <usize>load<u32>(ghc + GHC_MEMSLOT);
    host_fault_in(vm, slot, (gpa >> 12) - load<u64>(slot + SLOT_BASE_GFN), 1, can_block != 0);
    const hva = <usize>load<u32>(ghc + GHC_HVA);
    if (hva != 0) memory.copy(hva + <usize>offset, src, <usize>len);
    mark_page_dirty_in_slot(vm, vcpu, slot, gpa >> 12);
  }
  if (vcpu != 0) {
    dirty_ring_publish(vcpu);
    vcpu_put(vcpu, loaded);
  }
  return r;
}

/** kvm_read_guest_offset_cached: `len` bytes at `offset` of the cached range into `dst`. */
export function kvm_read_guest_offset_cached(vm: usize, ghc: usize, dst: usize, offset32: u32, len32: u32): i32 {
  const offset = <u64>offset32;
  const len = <u64>len32;
  const r = ghc_ready(vm, ghc, offset, len);
  if (r < 0) return r;
  const gpa = load<u64>(ghc + GHC_GPA) + offset;
  if (r == 1) return read_guest(vm, 0, gpa, dst, len);
  const hva = <usize>load<u32>(ghc + GHC_HVA);
  if (hva != 0) memory.copy(dst, hva + <usize>offset, <usize>len);
  else memory.fill(dst, 0, <usize>len);
  return 0;
}

// ---- gfn_to_pfn_cache accesses from the host (pfncache.ts) ----

/**
 * One access through a pfn cache with its usage protocol (pfncache.ts gpc_access): in
 * vCPU context when `vcpu` is set (vcpu->mutex taken with `tag`; the mark goes to that
 * vCPU's ring), else VM context. `atomic_ctx`: no refresh, -EAGAIN if the lock is
 * contended or the cache invalid.
 */
export function kvm_gpc_access(gpc: usize, vcpu: usize, tag: u32, buf: usize, offset: u32, len: u32, write: u32, atomic_ctx: u32, can_block: u32): i32 {
  let loaded: i32 = 0;
  if (vcpu != 0) {
    loaded = vcpu_load(vcpu, tag);
    if (loaded < 0) return loaded;
  }
  const r = gpc_access(gpc, vcpu, buf, <u64>offset, <u64>len, write != 0, atomic_ctx != 0, can_block != 0);
  if (vcpu != 0) {
    dirty_ring_publish(vcpu);
    vcpu_put(vcpu, loaded);
  }
  return r;
}
