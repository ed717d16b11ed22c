// guest_walk — the guest's own page tables: gva → gpa through the guest's 4-level x86-64
// tables (arch/x86/kvm/mmu/paging_tmpl.h FNAME(walk_addr_generic), for the CPU's walk
// under the TDP MMU and for the shadow MMU's fault, which must know the guest tables it
// shadows).
//
//   CR3 ─► PML4 (level 4) ─► PDPT (3) ─► PD (2) ─► PT (1) ─► the data page
//   each table: 512 gPTEs of 8 bytes in guest memory; index at level L = gva bits 12+9(L-1)
//   gPTE: P (bit 0), R/W (1), U/S (2), A (5), D (6), PS (7), address bits 12..51
//
// The walk reads the gPTEs through the memslots of the vCPU's address space (KVM reads them
// through the host mapping; the model's CPU does the same, see below). A gPTE that is not
// present, a table outside every backed memslot, or a write through a read-only level is a
// guest page fault: the access does not complete and KVM_RUN exits KVM_EXIT_EXCEPTION with
// the gva in VCPU_FAULT_ADDR (dirtlog's guest has no #PF handler).
//
// A 32-bit non-PAE guest (PAGING_32BIT) has two levels of 1024 4-byte entries instead.
//
// Not modelled: guest huge pages (PS set above level 1 faults), the A and D bits (the
// walker neither reads nor sets them: a guest builds its tables with them set, as
// buildPageTables does), U/S, NX and the PAE format. With the TDP MMU the CPU's walk
// does not go through EPT here, so it never faults a table page in (the hardware would, and
// with logging on would report a table page it faulted in writable).
import {
  KVM_EXIT_EXCEPTION,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  PAGING_32BIT,
  VCPU_AS,
  VCPU_CR3,
  VCPU_PAGING,
  VCPU_FAULT_ADDR,
  VCPU_WALK,
  WALK_GPA,
  WALK_TABLE_GFN,
  WALK_WRITABLE,
} from "./layout";
import { memslot_lookup } from "./kvm_host";

export const GPTE_P: u64 = 1 << 0;
export const GPTE_RW: u64 = 1 << 1;
export const GPTE_PS: u64 = 1 << 7;
export const GPTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/**
 * The gPTE at `index` of the guest table at `table_gfn` (8 bytes, or 4 for a 32-bit guest),
 * or 0 outside backed memory.
 */
@inline export function read_gpte(vm: usize, as_id: u32, table_gfn: u64, index: u32, bits32: bool): u64 {
  const slot = memslot_lookup(vm, as_id, table_gfn);
  if (slot == 0) return 0;
  const backing = <usize>load<u32>(slot + SLOT_BACKING);
  if (backing == 0) return 0;
  const table = backing + <usize>((table_gfn - load<u64>(slot + SLOT_BASE_GFN)) << 12);
  return bits32 ? <u64>load<u32>(table + (<usize>index << 2)) : load<u64>(table + (<usize>index << 3));
}

/**
 * FNAME(walk_addr): translate gva for a read or a write. True with the result in the
 * vCPU's VCPU_WALK (the gpa, each level's table gfn, whether every level allows writes);
 * false for a guest page fault (gva in VCPU_FAULT_ADDR). x86-64: 4 levels of 512 8-byte
 * gPTEs; 32-bit non-PAE (paging32): CR3 ─► PD (1024 4-byte PDEs, 4 MiB each) ─► PT, and a
 * gva of 4 GiB or more does not exist.
 */
export function guest_walk(vm: usize, vcpu: usize, gva: u64, write: bool): bool {
  const bits32 = load<u32>(vcpu + VCPU_PAGING) == PAGING_32BIT;
  const levels: u32 = bits32 ? 2 : 4;
  const index_bits: u32 = bits32 ? 10 : 9;
  const addr_mask: u64 = bits32 ? 0xffff_f000 : GPTE_ADDR_MASK;
  const as_id = load<u32>(vcpu + VCPU_AS);
  const walk = vcpu + VCPU_WALK;
  let table_gfn = (load<u64>(vcpu + VCPU_CR3) & addr_mask) >> 12;
  let writable = true;
  let ok = !bits32 || gva >> 32 == 0;
  for (let level = levels; ok && level >= 1; level--) {
    store<u64>(walk + WALK_TABLE_GFN + (<usize>(level - 1) << 3), table_gfn);
    const index = <u32>((gva >> (12 + index_bits * (level - 1))) & ((1 << index_bits) - 1));
    const gpte = read_gpte(vm, as_id, table_gfn, index, bits32);
    ok = (gpte & GPTE_P) != 0 && (level == 1 || (gpte & GPTE_PS) == 0);
    writable = writable && (gpte & GPTE_RW) != 0;
    table_gfn = (gpte & addr_mask) >> 12;
  }
  if (!ok || (write && !writable)) {
    store<u64>(vcpu + VCPU_FAULT_ADDR, gva);
    return false;
  }
  store<u64>(walk + WALK_GPA, (table_gfn << 12) | (gva & 0xfff));
  store<u32>(walk + WALK_WRITABLE, writable ? 1 : 0);
  return true;
}

/** The gpa of the last successful guest_walk. */
@inline export function guest_walk_gpa(vcpu: usize): u64 {
  return load<u64>(vcpu + VCPU_WALK + WALK_GPA);
}

/** A guest page fault ends the access: the exit reason. */
@inline export function guest_page_fault_exit(): u32 {
  return KVM_EXIT_EXCEPTION;
}
