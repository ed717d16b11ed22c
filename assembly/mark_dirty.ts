// mark_dirty — mark_page_dirty_in_slot (virt/kvm/kvm_main.c, spec §3.8): the one place a
// dirtied page is reported. Routing: a dirty-logged slot on a ring VM with a running vCPU
// pushes to that vCPU's ring; otherwise the slot's bitmap gets the bit (if it has one).
// A ring VM without a bitmap and without a running vCPU loses the report, as the kernel
// does after its WARN (counted in VM_NO_VCPU_WARN).
import { SLOT_BASE_GFN, SLOT_BITMAP, VCPU_AS, VM_NO_VCPU_WARN, VM_RING_SIZE } from "./layout";
import { bitmap_set } from "./dirty_bitmap";
import { dirty_ring_push } from "./dirty_ring";
import { memslot_lookup, slot_id_of, slot_logged } from "./kvm_host";

/** Report gfn of `slot` dirty; `vcpu` is the running vCPU's block, or 0 for none. */
export function mark_page_dirty_in_slot(vm: usize, vcpu: usize, slot: usize, gfn: u64): void {
  if (!slot_logged(slot)) return;
  const rel = gfn - load<u64>(slot + SLOT_BASE_GFN);
  const ring = load<u32>(vm + VM_RING_SIZE) != 0;
  if (ring && vcpu != 0) {
    dirty_ring_push(vm, vcpu, slot_id_of(vm, slot), rel);
  } else if (load<u32>(slot + SLOT_BITMAP) != 0) {
    bitmap_set(slot, rel);
  } else if (ring) {
    atomic.add<u32>(vm + VM_NO_VCPU_WARN, 1);
  }
}

/** kvm_vcpu_mark_page_dirty: gfn in the vCPU's address space (AS 1 while in SMM). */
export function kvm_vcpu_mark_page_dirty(vm: usize, vcpu: usize, gfn: u64): void {
  const slot = memslot_lookup(vm, load<u32>(vcpu + VCPU_AS), gfn);
  if (slot != 0) mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
}
