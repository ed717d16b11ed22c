// shadow — the shadow MMU's pages and their rmaps (arch/x86/kvm/mmu/mmu.c: struct
// kvm_mmu_page, kvm_mmu_get_child_sp, link_shadow_page, rmap_add, kvm_mmu_zap_all_fast;
// spec §5.7, §5.8). Selected with createVm({ mmu: "shadow" }) (VM_MMU = MMU_SHADOW).
//
// What exists so far: the shadow MMU of a guest that runs unpaged (gva = gpa), i.e. KVM's
// nonpaging mode, whose shadow pages are all *direct* (role.direct = 1, gfn = the first
// gfn the page maps, no guest table behind them). Guest page tables (indirect pages,
// account_shadowed, unsync, quadrants) are not modelled yet.
//
//   shadow page table   4 levels of 512 SPTEs in pt_pool pages, the same format the TDP
//                       MMU uses (the CPU walks it the same way); one root per address
//                       space (role.smm = as_id), the VM_ROOT pages
//   kvm_mmu_page        SP_SIZE bytes per pool page in VM_SP_TABLE, found from an SPTE's
//                       address (sptep_to_sp); role, gfn, parent_ptes (a pte_list)
//   rmap                per slot, one head per 4K gfn (SLOT_RMAP): every present leaf SPTE
//                       is on the rmap of the gfn it maps (rmap_add when installed, removed
//                       when zapped) — dirty logging re-protects through it (mmu.ts)
//
// Invariants:
//   - leaves are 4K only (dirtlog's shadow MMU maps no huge pages yet), so the rmaps of
//     the 2M and 1G levels are always empty and are not allocated;
//   - rmaps, parent_ptes and shadow pages change only under mmu_lock for write (every
//     shadow-MMU fault takes the write side; only the lockless fast path runs without it,
//     and it changes no list: it sets W on a present SPTE);
//   - an SPTE is on exactly one rmap while present, and on none once zapped.
import {
  MMU_SHADOW,
  PAGE_SIZE,
  PT_LEVELS,
  SLOT_BASE_GFN,
  SLOT_RMAP,
  SP_GFN,
  SP_IN_USE,
  SP_PARENT_PTES,
  SP_ROLE,
  SP_SIZE,
  VM_MMU,
  VM_NSORTED,
  VM_POOL_BASE,
  VM_POOL_NEXT,
  VM_PTE_POOL,
  VM_SHADOW_PAGES,
  VM_SP_TABLE,
  KVM_NR_AS,
  SLOT_NPAGES,
  VM_ROOT,
} from "./layout";
import { nsorted, slot_ptr, sorted_ptr } from "./kvm_host";
import { lockdep_assert_held_write } from "./mmu_lock";
import { pool_alloc } from "./pt_pool";
import {
  PTE_LIST_DESC_SIZE,
  PTE_POOL_SIZE,
  pte_list_add,
  pte_list_pool_has_room,
  pte_list_pool_init,
  pte_list_pool_reset,
} from "./rmap";
import { SPTE_PFN_MASK, is_present, level_index, make_nonleaf } from "./spte";

// union kvm_mmu_page_role (v6.8 bit layout, spec §5.8)
export const ROLE_LEVEL_MASK: u32 = 0xf;
export const ROLE_DIRECT: u32 = 1 << 7;
export const ROLE_SMM_SHIFT: u32 = 24;

@inline export function is_shadow_mmu(vm: usize): bool {
  return load<u32>(vm + VM_MMU) == MMU_SHADOW;
}

/** The pte_list_desc pool of the VM's rmaps and parent_ptes. */
@inline export function shadow_pte_pool(vm: usize): usize {
  return <usize>load<u32>(vm + VM_PTE_POOL);
}

/** sptep_to_sp: the kvm_mmu_page of the page-table page holding `sptep` (or the page itself). */
@inline export function sptep_to_sp(vm: usize, sptep: usize): usize {
  const index = ((sptep & ~(<usize>(PAGE_SIZE - 1))) - <usize>load<u32>(vm + VM_POOL_BASE)) / PAGE_SIZE;
  return <usize>load<u32>(vm + VM_SP_TABLE) + index * SP_SIZE;
}

/** gfn_to_rmap at 4K: the rmap head of gfn in `slot` (a shadow-MMU VM's slot). */
@inline export function gfn_to_rmap(slot: usize, gfn: u64): usize {
  return <usize>load<u32>(slot + SLOT_RMAP) + <usize>((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 3);
}

/** kvm_mmu_alloc_shadow_page's bookkeeping for table `table`: a direct page at `level`. */
function sp_init(vm: usize, table: usize, level: u32, gfn: u64, as_id: u32): usize {
  const sp = sptep_to_sp(vm, table);
  memory.fill(sp, 0, SP_SIZE);
  store<u64>(sp + SP_GFN, gfn);
  store<u32>(sp + SP_ROLE, level | ROLE_DIRECT | (as_id << ROLE_SMM_SHIFT));
  store<u32>(sp + SP_IN_USE, 1);
  store<u32>(vm + VM_SHADOW_PAGES, load<u32>(vm + VM_SHADOW_PAGES) + 1);
  return sp;
}

/**
 * Set up a shadow-MMU VM (kvm_mmu_init_vm + the first root): the descriptor pool at
 * `pool` (PTE_POOL_SIZE header, then `descs` descriptors) and the kvm_mmu_page table, and
 * each address space's root page (VM_ROOT) as a direct level-4 page.
 */
export function shadow_init(vm: usize, pool: usize, descs: u32, sp_table: usize): void {
  store<u32>(vm + VM_MMU, MMU_SHADOW);
  store<u32>(vm + VM_PTE_POOL, <u32>pool);
  store<u32>(vm + VM_SP_TABLE, <u32>sp_table);
  pte_list_pool_init(pool, pool + PTE_POOL_SIZE, descs);
  shadow_init_roots(vm);
}

function shadow_init_roots(vm: usize): void {
  store<u32>(vm + VM_SHADOW_PAGES, 0);
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    sp_init(vm, <usize>load<u32>(vm + VM_ROOT + (as_id << 2)), PT_LEVELS, 0, as_id);
  }
}

/** Bytes of descriptors for `descs` pte_list_descs, header included. */
export function shadow_pte_pool_bytes(descs: u32): u32 {
  return PTE_POOL_SIZE + descs * PTE_LIST_DESC_SIZE;
}

/**
 * The direct-map fault's walk (kvm_mmu_get_child_sp + link_shadow_page): from the root
 * of as_id down to gfn's 4K SPTE, allocating and linking a direct shadow page at each
 * missing level (its parent SPTE goes on its parent_ptes). Returns the 4K SPTE's address
 * | 1, or 0 when the page-table pool or the descriptor pool is exhausted (nothing linked
 * for the page that failed). Caller holds mmu_lock for write.
 */
export function shadow_get_or_create(vm: usize, as_id: u32, gfn: u64): usize {
  lockdep_assert_held_write(vm);
  let table = <usize>load<u32>(vm + VM_ROOT + (as_id << 2));
  for (let level = PT_LEVELS; level > 1; level--) {
    const p = table + (<usize>level_index(gfn, level) << 3);
    const spte = atomic.load<u64>(p);
    if (is_present(spte)) {
      table = <usize>(spte & SPTE_PFN_MASK);
      continue;
    }
    if (!pte_list_pool_has_room(shadow_pte_pool(vm))) return 0;
    const child = pool_alloc(vm);
    if (child == 0) return 0;
    const child_level = level - 1;
    const span_shift = 9 * child_level; // gfns mapped by the child page: 512^child_level
    const sp = sp_init(vm, child, child_level, (gfn >> span_shift) << span_shift, as_id);
    pte_list_add(shadow_pte_pool(vm), sp + SP_PARENT_PTES, p); // the first parent: a bare pointer
    atomic.store<u64>(p, make_nonleaf(child));
    table = child;
  }
  return (table + (<usize>level_index(gfn, 1) << 3)) | 1;
}

/**
 * rmap_add for a leaf SPTE just made present for gfn of `slot`. Returns the rmap's length
 * before the add (the caller zaps it past RMAP_RECYCLE_THRESHOLD), or -1 if no descriptor
 * was free (the fault checks kvm_mmu_leaf_has_room before it installs the SPTE, under the
 * same write lock, so this does not happen).
 */
export function shadow_rmap_add(vm: usize, slot: usize, gfn: u64, sptep: usize): i32 {
  lockdep_assert_held_write(vm);
  return pte_list_add(shadow_pte_pool(vm), gfn_to_rmap(slot, gfn), sptep);
}

/**
 * After the page tables were freed by kvm_mmu_zap_all_fast (tdp_zap_all): every rmap is
 * empty, every descriptor free, every shadow page but the roots gone.
 */
export function shadow_zap_all_done(vm: usize): void {
  lockdep_assert_held_write(vm);
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    const arr = sorted_ptr(vm, as_id);
    const n = nsorted(vm, as_id);
    for (let i: u32 = 0; i < n; i++) {
      const s = slot_ptr(vm, as_id, load<u16>(arr + (<usize>i << 1)));
      const rmap = <usize>load<u32>(s + SLOT_RMAP);
      if (rmap != 0) memory.fill(rmap, 0, <usize>(load<u64>(s + SLOT_NPAGES) << 3));
    }
  }
  pte_list_pool_reset(shadow_pte_pool(vm));
  memory.fill(<usize>load<u32>(vm + VM_SP_TABLE), 0, <usize>load<u32>(vm + VM_POOL_NEXT) * SP_SIZE);
  shadow_init_roots(vm);
}
