// spte — the shadow/TDP page-table entry: bit layout and small predicates.
//
// dirtlog models Intel EPT (the format that has PML), so bit positions are the kernel's
// EPT ones (arch/x86/kvm/mmu/spte.h):
//
//   63       58 57     52..53  12..51    11        9  8  7   2  1  0
//   [ ] .. [ M ][ H ] [AD type][ pfn  ][MMU_PRES][ D][ A][PS][X][W][R]
//
//   R/W/X    hardware access bits (W = PT_WRITABLE_MASK, bit 1)
//   PS       huge leaf at level 2 (2M) or 3 (1G)
//   A/D      EPT accessed/dirty (PML logs a GPA on a D 0→1 transition)
//   MMU_PRES SPTE_MMU_PRESENT_MASK, KVM's "shadow-present"
//   H        EPT_SPTE_HOST_WRITABLE (57): host mapping is writable; fixed at creation
//   M        EPT_SPTE_MMU_WRITABLE (58): KVM allows W to be restored
//
// Writable-state triples (H, M, W) — who may restore W (spec §5.2):
//   1 1 1  writable
//   1 1 0  dirty-log protected: the lockless fast path may set W again (cmpxchg)
//   1 0 0  shadow-style protected (write tracking, INITIALLY_SET huge step): slow path only
//   0 0 0  host read-only (read-only memslot, or the shared zero page)
// Invariant: M is never set without H.
//
// pfn 0 is the shared zero page: unbacked slots map every page there and never-touched
// host pages are mapped there read-only. A store through a pfn-0 SPTE writes no bytes.
//
// TLB rule (spec §5.3): a change needs a flush before it is relied on iff it clears M.
// Dirty-log protection (W cleared, M kept) may defer the flush to the end of the ioctl.

export const SPTE_R: u64 = 1 << 0;
export const SPTE_W: u64 = 1 << 1;
export const SPTE_X: u64 = 1 << 2;
export const SPTE_PS: u64 = 1 << 7;
export const SPTE_A: u64 = 1 << 8;
export const SPTE_D: u64 = 1 << 9;
export const SPTE_MMU_PRESENT: u64 = 1 << 11;
export const SPTE_H: u64 = (<u64>1) << 57;
export const SPTE_M: u64 = (<u64>1) << 58;
export const SPTE_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;

/** Non-leaf entry pointing at a child table at `table` (a 4 KiB aligned address). */
@inline export function make_nonleaf(table: usize): u64 {
  return (<u64>table) | SPTE_R | SPTE_W | SPTE_X | SPTE_MMU_PRESENT;
}

/** Leaf SPTE for host address `hpa` (0 = zero page) at `level` (1 = 4K, 2 = 2M, 3 = 1G). */
@inline export function make_leaf(hpa: u64, level: u32, writable: bool, host_writable: bool): u64 {
  let spte = (hpa & SPTE_PFN_MASK) | SPTE_R | SPTE_X | SPTE_MMU_PRESENT | SPTE_A;
  if (level > 1) spte |= SPTE_PS;
  if (host_writable) spte |= SPTE_H;
  // make_spte: write access sets W | MMU-writable, and D (A/D enabled).
  if (writable) spte |= SPTE_W | SPTE_M | SPTE_D;
  return spte;
}

@inline export function is_present(spte: u64): bool {
  return (spte & SPTE_MMU_PRESENT) != 0;
}

/** A present entry is a leaf at level 1, or at levels 2/3 when PS is set. */
@inline export function is_leaf(spte: u64, level: u32): bool {
  return level == 1 || (spte & SPTE_PS) != 0;
}

@inline export function is_writable(spte: u64): bool {
  return (spte & SPTE_W) != 0;
}

@inline export function is_mmu_writable(spte: u64): bool {
  return (spte & SPTE_M) != 0;
}

@inline export function spte_hpa(spte: u64): u64 {
  return spte & SPTE_PFN_MASK;
}

/** leaf_spte_change_needs_tlb_flush: only clearing MMU-writable forces an immediate flush. */
@inline export function change_needs_tlb_flush(old_spte: u64, new_spte: u64): bool {
  return is_mmu_writable(old_spte) && !is_mmu_writable(new_spte);
}

/** Pages covered by one entry at `level`: 1, 512, 262144. */
@inline export function level_pages(level: u32): u64 {
  return (<u64>1) << (9 * (level - 1));
}

/** Index of `gfn` inside a table at `level`. */
@inline export function level_index(gfn: u64, level: u32): u32 {
  return <u32>((gfn >> (9 * (level - 1))) & 511);
}

/**
 * spte_has_volatile_bits (spte.c): could a thread that does not hold mmu_lock for write
 * change this SPTE? Only then must an update be an atomic read-modify-write:
 *   - W clear, MMU-writable set (1 1 0): the lockless fast page fault may set W (cmpxchg);
 *   - A/D enabled (every dirtlog leaf) with A clear: the CPU may set A;
 *   - writable with D clear: the CPU may set D (with PML it also logs the gpa).
 * Every other lockless actor is excluded by the write side of mmu_lock: TDP faults hold
 * the read side, zaps and notifiers the write side, and a vCPU's TLB never writes SPTEs.
 */
@inline export function spte_has_volatile_bits(spte: u64): bool {
  if ((spte & SPTE_W) == 0 && (spte & SPTE_M) != 0) return true;
  if ((spte & SPTE_A) == 0) return true;
  return (spte & SPTE_W) != 0 && (spte & SPTE_D) == 0;
}

/**
 * mmu_spte_update's store for clearing `bits` of the SPTE at p, which held `old`, under the
 * write side of mmu_lock: an atomic and-not when the SPTE has volatile bits (a lockless
 * writer may change it meanwhile), a plain store otherwise. The debug build makes the plain
 * store a compare-and-swap and asserts that nothing changed the SPTE, i.e. the rule holds.
 */
@inline export function spte_clear_bits_locked(p: usize, old: u64, bits: u64): void {
  if (spte_has_volatile_bits(old)) {
    atomic.and<u64>(p, ~bits);
  } else if (!ASC_NO_ASSERT) {
    assert(atomic.cmpxchg<u64>(p, old, old & ~bits) == old, "a non-volatile SPTE changed under mmu_lock");
  } else {
    store<u64>(p, old & ~bits);
  }
}
