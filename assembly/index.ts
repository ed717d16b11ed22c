// dirtlog core — the exported surface of build/dirtlog.wasm. Every function takes raw
// addresses in the one shared memory (see layout.ts); nothing here allocates or keeps state.
export { kvm_vm_init, kvm_vcpu_init, kvm_enable_dirty_log_ring, kvm_enable_dirty_ring_with_bitmap } from "./vm";
export { kvm_reset_dirty_rings } from "./dirty_ring";
export { dirty_ring_collect, dirty_ring_count } from "./ring_reaper";
export { memslot_prepare, memslot_commit, memslot_meta_bytes, memslot_host_present_map } from "./memslot";
export { memslot_lookup } from "./kvm_host";
export {
  kvm_page_track_alloc_slot,
  kvm_page_track_enable,
  kvm_page_track_set_notifiers,
  page_track_bytes,
  gfn_write_track_count,
} from "./page_track";
export { kvm_write_track_update_gfn } from "./mmu";
export { spte_has_volatile_bits } from "./spte";
export {
  kvm_get_dirty_log,
  kvm_dirty_log_done,
  kvm_clear_dirty_log_check,
  kvm_clear_dirty_log,
  kvm_dirty_log_source,
  kvm_dirty_log_scratch,
  kvm_dirty_log_second,
} from "./dirty_bitmap";
export { kvm_vcpu_write, kvm_vcpu_read, kvm_vcpu_write_strided, kvm_set_cr3, kvm_mmu_invlpg } from "./fault";
export {
  kvm_write_guest,
  memslot_host_touch,
  kvm_gfn_to_hva_cache_init,
  kvm_write_guest_offset_cached,
  kvm_read_guest_offset_cached,
  kvm_gpc_access,
} from "./kvm_write";
export {
  kvm_gpc_init,
  kvm_gpc_activate,
  kvm_gpc_activate_hva,
  kvm_gpc_refresh,
  kvm_gpc_deactivate,
  kvm_gpc_check_locked,
} from "./pfncache";
export { kvm_mmu_notifier_invalidate_slot } from "./mmu_notifier";
export { kvm_xen_set_runstate_area, kvm_xen_update_runstate } from "./xen";
export { kvm_run } from "./run";
export { kvm_smm_changed } from "./x86";
export { kvm_vcpu_kick, kvm_vcpu_lock, kvm_vcpu_mutex_wait_prepare, kvm_vcpu_unlock } from "./vcpu";
export { tdp_count_bits, tdp_walk } from "./tdp";
export { kvm_flush_remote_tlbs } from "./tlb";
export { measure_plain_pass, measure_plain_pass_strided, measure_atomic_pass } from "./measure";
export { shadow_init, shadow_pte_pool_bytes } from "./shadow";
export { kvm_rmap_count } from "./mmu";
// the pte_list over raw addresses (test/rmap.test.ts, bench/rmap.js)
export {
  pte_list_pool_init,
  pte_list_pool_used,
  pte_list_add,
  pte_list_remove,
  pte_list_count,
  rmap_get_first,
  rmap_get_next,
  kvm_rmap_write_protect,
} from "./rmap";
