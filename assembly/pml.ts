// pml — Intel page-modification logging (arch/x86/kvm/vmx/vmx.c, spec §5.10).
//
//   buffer   one 4 KiB page per vCPU: 512 u64 guest-physical page addresses
//   index    GUEST_PML_INDEX: starts at 511 and counts down; the CPU logs at `index` and
//            decrements. Outside 0..511 (the u16 wrapped) the buffer is full: the next
//            access that needs a log takes a PML-full exit instead, and does not complete.
//
// With PML, dirty-log protection of 4K pages clears D instead of W (no write faults); the
// CPU logs the GPA when it sets D from 0 to 1. Huge mappings are still write-protected.
// Every VM exit drains the buffer (vmx_flush_pml_buffer) oldest first into
// kvm_vcpu_mark_page_dirty, i.e. into the vCPU's ring or the slot's bitmap.
// PML runs only while at least one memslot has dirty logging.
// Only the vCPU's own thread touches its buffer: a kick from another thread is a request
// (KVM_REQ_KICK) that makes the vCPU exit and drain. Every return to userspace is an exit,
// so a vCPU outside KVM_RUN always has an empty buffer.
import {
  PML_LOG_NR_ENTRIES,
  VCPU_PML_BUF,
  VCPU_PML_FULL_EXITS,
  VCPU_PML_INDEX,
  VM_NR_LOGGING,
} from "./layout";
import { kvm_vcpu_mark_page_dirty } from "./mark_dirty";
import { SPTE_D } from "./spte";
import { lockdep_assert_vcpu_held } from "./vcpu";

const PML_HEAD_INDEX: u32 = PML_LOG_NR_ENTRIES - 1;

/** Is the CPU logging D transitions for this vCPU right now? */
@inline export function pml_active(vm: usize, vcpu: usize): bool {
  return load<u32>(vcpu + VCPU_PML_BUF) != 0 && load<u32>(vm + VM_NR_LOGGING) != 0;
}

export function pml_init(vcpu: usize, buffer: usize): void {
  store<u32>(vcpu + VCPU_PML_BUF, <u32>buffer);
  store<u32>(vcpu + VCPU_PML_INDEX, PML_HEAD_INDEX);
}

/**
 * The CPU's side of a store through a writable 4K SPTE at `sptep` whose D bit is clear:
 * set D and log the page on the 0→1 transition. Returns false for a PML-full exit (the
 * access did not complete, D untouched).
 */
export function pml_log_write(vcpu: usize, sptep: usize, gpa: u64): bool {
  lockdep_assert_vcpu_held(vcpu);
  const index = load<u32>(vcpu + VCPU_PML_INDEX);
  if (index > PML_HEAD_INDEX) {
    store<u64>(vcpu + VCPU_PML_FULL_EXITS, load<u64>(vcpu + VCPU_PML_FULL_EXITS) + 1);
    return false;
  }
  const old = atomic.or<u64>(sptep, SPTE_D);
  if ((old & SPTE_D) == 0) {
    const buf = <usize>load<u32>(vcpu + VCPU_PML_BUF);
    store<u64>(buf + (<usize>index << 3), gpa & ~(<u64>0xfff));
    store<u32>(vcpu + VCPU_PML_INDEX, index - 1); // 0 - 1 wraps: full
  }
  return true;
}

/** vmx_flush_pml_buffer, on every VM exit: report logged pages oldest first, then empty. */
export function pml_flush(vm: usize, vcpu: usize): void {
  const buf = <usize>load<u32>(vcpu + VCPU_PML_BUF);
  if (buf == 0) return;
  const index = load<u32>(vcpu + VCPU_PML_INDEX);
  if (index == PML_HEAD_INDEX) return;
  lockdep_assert_vcpu_held(vcpu);
  const tail: u32 = index > PML_HEAD_INDEX ? 0 : index + 1;
  for (let i = <i32>PML_HEAD_INDEX; i >= <i32>tail; i--) {
    kvm_vcpu_mark_page_dirty(vm, vcpu, load<u64>(buf + (<usize>i << 3)) >> 12);
  }
  store<u32>(vcpu + VCPU_PML_INDEX, PML_HEAD_INDEX);
}
