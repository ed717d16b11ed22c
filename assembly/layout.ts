// layout — every structure of the core lives at an address in the one shared
// WebAssembly.Memory; this file is the only place their field offsets are defined.
// The host mirrors it in src/layout.ts (test/layout.test.ts pins that they agree).
//
// Invariant: the core keeps no state outside these structures. No globals, no static
// data, no runtime allocation (the built module is checked for that by a test).
//
// Memory map (addresses handed out by the host's region allocator):
//   [0, 64 KiB)            guard: never written (a stray static would land here)
//   vm block               VM_* fields below, 4 KiB
//   slot table             2 address spaces × 32768 ids × SLOT_SIZE, indexed by (as, id)
//   sorted ids             2 × 32768 u16 slot ids per address space, sorted by base_gfn
//   page-table pool        POOL pages of 4 KiB (512 u64 SPTEs each), see tdp.ts
//   vcpu blocks            VCPU_SIZE each, see below
//   per-slot metadata      one region per slot (SLOT_META), see memslot.ts
//   per-slot backing       guest bytes of backed slots, 2 MiB aligned when ≥ 2 MiB (huge
//                          mappings need hva ≡ gpa mod 2 MiB), else 4 KiB

// ---- errno (values returned negated by the core) ----
export const EPERM: i32 = 1;
export const ENOENT: i32 = 2;
export const EIO: i32 = 5;
export const ENXIO: i32 = 6;
export const EAGAIN: i32 = 11;
export const E2BIG: i32 = 7;
export const ENOMEM: i32 = 12;
export const EFAULT: i32 = 14;
export const EEXIST: i32 = 17;
export const EBUSY: i32 = 16;
export const EINVAL: i32 = 22;

// ---- KVM constants ----
export const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1;
export const KVM_MEM_READONLY: u32 = 2;
export const KVM_MEMSLOT_INVALID: u32 = 1 << 16; // kernel-internal: a DELETE or MOVE is zapping the slot's mappings
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: u32 = 1;
export const KVM_DIRTY_LOG_INITIALLY_SET: u32 = 2;
export const KVM_EXIT_EXCEPTION: u32 = 1; // the guest took a page fault dirtlog's guest cannot handle
export const KVM_EXIT_IO: u32 = 2;
export const KVM_EXIT_MMIO: u32 = 6;
export const KVM_EXIT_SHUTDOWN: u32 = 8;
export const KVM_EXIT_INTR: u32 = 10;
export const KVM_EXIT_INTERNAL_ERROR: u32 = 17;
export const KVM_EXIT_DIRTY_RING_FULL: u32 = 31;
// dirtlog's own exit, not KVM's: a guest write to a write-tracked page must be emulated
// but the page-track event queue is full; the write has not retired (retried on re-entry)
export const KVM_EXIT_PAGE_TRACK_FULL: u32 = 0x10001;
export const TRACK_EVENT_SIZE: u32 = 32; // u64 gpa, u32 bytes, u32 as_id, 16 bytes written

export const KVM_NR_AS: u32 = 2; // x86 with SMM: 0 = normal, 1 = SMM
export const KVM_MEM_SLOTS_NUM: u32 = 32767; // SHRT_MAX ids per address space
export const KVM_USER_MEM_SLOTS: u32 = 32764; // 3 internal slots on x86
export const KVM_MEM_MAX_NR_PAGES: u64 = 0x7fffffff;
export const KVM_MAX_GFN: u64 = 0xf_ffff_ffff; // 48-bit guest physical space, 4-level TDP

// memslot change kinds (kernel enum kvm_mr_change), plus "nothing to do"
export const KVM_MR_CREATE: i32 = 0;
export const KVM_MR_DELETE: i32 = 1;
export const KVM_MR_MOVE: i32 = 2;
export const KVM_MR_FLAGS_ONLY: i32 = 3;
export const KVM_MR_NONE: i32 = 4;
// A MOVE that x86's kvm_arch_prepare_memory_region rejects (last gfn beyond the MMU's
// reach): the kernel has already published the INVALID copy and zapped everything, and
// undoes it with a second publish, then fails with EINVAL.
export const KVM_MR_MOVE_REJECTED: i32 = 5;

// ---- VM control block ----
export const VM_SIZE: u32 = 4096;
export const VM_GEN: u32 = 0; // u64 × KVM_NR_AS: memslot generation per address space
export const VM_SLOTS: u32 = 16; // u32: slot table address
export const VM_SORTED: u32 = 20; // u32: sorted-id arrays address
export const VM_NSORTED: u32 = 24; // u32 × KVM_NR_AS: number of slots per address space
export const VM_ROOT: u32 = 32; // u32 × KVM_NR_AS: TDP root table per address space
export const VM_POOL_BASE: u32 = 40; // u32: first page-table page
export const VM_POOL_PAGES: u32 = 44; // u32: pool capacity in pages
export const VM_POOL_NEXT: u32 = 48; // u32: bump index (pages never handed out yet)
export const VM_POOL_FREE: u32 = 52; // u32: free-list head (address of a free page, 0 = none)
export const VM_POOL_LOCK: u32 = 56; // u32: spinlock guarding the free list
export const VM_POOL_USED: u32 = 60; // u32: pages in use
export const VM_MANUAL_PROTECT: u32 = 64; // u32: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 args[0]
export const VM_RING_SIZE: u32 = 68; // u32: dirty ring size in bytes (0 = bitmap mode)
export const VM_RING_WITH_BITMAP: u32 = 72; // u32: KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP enabled
export const VM_PML: u32 = 76; // u32: VM models Intel PML
export const VM_MMU_LOCK: u32 = 80; // u32: mmu_lock (reader/writer, see mmu_lock.ts)
export const VM_NR_LOGGING: u32 = 84; // u32: nr_memslots_dirty_logging
export const VM_TLB_FLUSHES: u32 = 88; // u64: remote TLB flushes requested
export const VM_NR_VCPUS: u32 = 96; // u32
export const VM_RING_WARN: u32 = 100; // u32: pushes into a hard-full ring (kernel WARN)
export const VM_ZAPS: u32 = 104; // u64: zap-all events (memslot DELETE/MOVE)
export const VM_SPLITS: u32 = 112; // u64: huge mappings split
export const VM_VCPU_TABLE: u32 = 120; // u32: address of KVM_MAX_VCPU_IDS u32 vCPU block addresses
export const VM_NO_VCPU_WARN: u32 = 124; // u32: ring VM writes without a running vCPU (kernel WARN)
export const VM_ITERATION: u32 = 128; // u64: the value guest workloads store (dirty_log_test's `iteration`)
export const VM_TLB_MODEL: u32 = 136; // u32: 1 = vCPUs cache translations (the TLB model is on)
export const VM_DEBUG: u32 = 140; // u32: fault injection for tests (VM_DEBUG_* bits)
export const VM_DEBUG_SKIP_TLB_FLUSH: u32 = 1; // remote flushes are counted but never requested
export const VM_WALK_CACHE: u32 = 144; // u64 gfn >> 9 (+1, 0 = empty), u32 leaf table, u32 level-2 table: re-protection's walk cache
export const VM_ERR_REASON: u32 = 160; // u32: ERR_* code of the last call that failed (the host words it)
// mmu notifier (mmu_notifier.ts) and the pfn caches it invalidates (pfncache.ts)
export const VM_MN_ACTIVE_INVALIDATE: u32 = 168; // u32: mn_active_invalidate_count
export const VM_MMU_INVALIDATE_IN_PROGRESS: u32 = 172; // u32: mmu_invalidate_in_progress
export const VM_MMU_INVALIDATE_SEQ: u32 = 176; // u64: mmu_invalidate_seq (bumped when an invalidation ends)
export const VM_MMU_INVALIDATE_START: u32 = 184; // u64: first gfn of the ranges being invalidated
export const VM_MMU_INVALIDATE_END: u32 = 192; // u64: gfn after the last
export const VM_GPC_LIST: u32 = 200; // u32: first active gfn_to_pfn_cache (kvm->gpc_list), 0 = none
export const VM_GPC_LOCK: u32 = 204; // u32: kvm->gpc_lock, a spinlock over the list
export const VM_NR_GPC_INVALIDATED: u32 = 208; // u32: caches invalidated by the mmu notifier (statistics)
export const VM_HOST_INVALIDATIONS: u32 = 212; // u32: invalidate_range_start calls (statistics)
export const VM_KVMCLOCK_BASE: u32 = 216; // u64: host clock (ns since the epoch) when the VM was created: kvmclock 0
export const VM_GPC_RETRIES: u32 = 224; // u32: pfn-cache resolutions redone because an invalidation raced them (statistics)
// write tracking (page_track.ts): the external notifier API's state and its event queue
export const VM_WRITE_TRACKING: u32 = 228; // u32: external write tracking enabled (gfn_write_track allocated for every slot)
export const VM_TRACK_NOTIFIERS: u32 = 232; // u32: registered page-track notifiers (0 = hlist_empty: no events queued)
export const VM_TRACK_QUEUE: u32 = 236; // u32: event queue (TRACK_EVENT_SIZE records)
export const VM_TRACK_ENTRIES: u32 = 240; // u32: queue capacity in records (a power of two)
export const VM_TRACK_HEAD: u32 = 244; // u32: next record the owner thread consumes (free-running)
export const VM_TRACK_TAIL: u32 = 248; // u32: records published (free-running; producers bump it under VM_TRACK_LOCK)
export const VM_TRACK_LOCK: u32 = 252; // u32: spinlock of the producers (vCPUs emulating writes)
export const VM_TRACK_WARN: u32 = 256; // u32: counter updates refused for overflow/underflow (the kernel's WARN_ON_ONCE)
export const VM_EMULATED_WRITES: u32 = 264; // u64: guest writes to write-tracked pages emulated (statistics)
export const VM_TRACK_FULL_EXITS: u32 = 276; // u32: KVM_EXIT_PAGE_TRACK_FULL exits (statistics)
export const VM_OWNER_CAN_BLOCK: u32 = 272;
// the MMU in use (mmu.ts): the TDP MMU, or the shadow MMU with its rmaps (shadow.ts, rmap.ts)
export const VM_MMU: u32 = 280; // u32: MMU_TDP or MMU_SHADOW, fixed at creation
export const VM_PTE_POOL: u32 = 284; // u32: the pte_list_desc pool (rmap.ts PTE_POOL_SIZE header), shadow only
export const VM_SP_TABLE: u32 = 288; // u32: one kvm_mmu_page (SP_SIZE) per page-table pool page, shadow only
export const VM_RMAP_ITER: u32 = 296; // 8 bytes: the rmap iterator of the mmu_lock writer (rmap.ts)
export const VM_SHADOW_PAGES: u32 = 304; // u32: shadow pages in use (kvm->arch.n_used_mmu_pages)
export const VM_RMAP_ITER2: u32 = 312; // 8 bytes: a second rmap iterator, for parent_ptes walks inside an rmap walk
export const VM_TDP_ITER: u32 = 320; // 64 bytes: the tdp_iter of the mmu_lock writer (tdp_iter.ts)
export const VM_SP_HASH: u32 = 384; // u32: mmu_page_hash, SP_HASH_BUCKETS u32 heads (shadow MMU)
export const SP_HASH_BUCKETS: u32 = 4096;
export const VM_MMU_VALID_GEN: u32 = 388; // u32: kvm->arch.mmu_valid_gen, 0 or 1 (shadow MMU; kvm_mmu_zap_all_fast toggles it)
export const VM_MMU_UNSYNC: u32 = 392; // u32: unsync shadow pages (the kernel's stat mmu_unsync)
export const VM_MMU_SHADOW_ZAPPED: u32 = 396; // u32: shadow pages zapped (the kernel's stat mmu_shadow_zapped)
export const VM_MMU_INVALID_LIST: u32 = 400; // u32: first page of the invalid list (prepared zaps awaiting kvm_mmu_commit_zap_page), 0 = empty
export const VM_MMU_PAGES: u32 = 404; // u32 + KVM_PAGE_ARRAY_NR × 8 bytes: struct kvm_mmu_pages of the mmu_lock writer (nr, then {sp, idx})
export const VM_MMU_PAGE_PATH: u32 = 540; // 4 × 8 bytes: struct mmu_page_path ({parent, idx} per level) for for_each_sp
export const VM_MMU_SYNC_WALKS: u32 = 572; // u32: mmu_unsync_walk batches that mmu_sync_children handled (statistics, internal)
export const VM_MMU_LOCK_BREAKS: u32 = 576; // u32: times a long mmu_lock hold let a waiting thread in (cond_resched_rwlock_write; statistics)
export const VM_INDIRECT_SHADOW_PAGES: u32 = 580; // u32: shadow pages with gPTEs (kvm->arch.indirect_shadow_pages)
export const VM_MMU_ZAP_IN_PROGRESS: u32 = 584; // u32: kvm_zap_obsolete_pages is running (its lock breaks let faults in)
export const KVM_PAGE_ARRAY_NR: u32 = 16; // kvm_mmu_pages: pages per mmu_sync_children batch
export const BATCH_ZAP_PAGES: u32 = 10; // kvm_zap_obsolete_pages: zaps between lock-break checks
export const MMU_TDP: u32 = 0;
export const MMU_SHADOW: u32 = 1; // u32: the VM owner's thread may block (Atomics.wait); vCPU workers always may

// ---- why a call failed (VM_ERR_REASON; src/errors.ts has the words) ----
export const ERR_FLAGS: u32 = 1; // unknown memslot flags
export const ERR_SLOT_ID: u32 = 2; // id beyond the user slots
export const ERR_INTERNAL: u32 = 3; // internal slot id or flags
export const ERR_ALIGN: u32 = 4; // gpa or size not page-aligned
export const ERR_AS_ID: u32 = 5; // address space id too large
export const ERR_WRAP: u32 = 6; // gpa + size wraps
export const ERR_NPAGES: u32 = 7; // more than KVM_MEM_MAX_NR_PAGES pages
export const ERR_NO_SLOT: u32 = 8; // size 0 for a slot that does not exist
export const ERR_CHANGE_SIZE: u32 = 9; // an existing slot cannot change size
export const ERR_CHANGE_RO: u32 = 10; // nor KVM_MEM_READONLY
export const ERR_CHANGE_BACKED: u32 = 11; // nor its backing (userspace_addr)
export const ERR_OVERLAP: u32 = 12; // overlaps another slot of the address space
export const ERR_MAX_GFN: u32 = 13; // last gfn beyond the MMU's reach
export const ERR_RING_MODE: u32 = 14; // dirty bitmap calls on a ring VM without a bitmap
export const ERR_LOG_SLOT: u32 = 15; // no such slot, or logging off
export const ERR_CLEAR_FIRST: u32 = 16; // first_page not a multiple of 64
export const ERR_CLEAR_RANGE: u32 = 17; // range outside the slot, or num_pages not a multiple of 64
export const ERR_MOVE_TRACKED: u32 = 18; // MOVE while an external page-track user is attached
export const ERR_TRACK_SLOT: u32 = 19; // write tracking: no memslot in address space 0 holds the gfn
export const ERR_TRACK_DISABLED: u32 = 20; // write tracking: not enabled (no notifier was ever registered)

// ---- memslot (SLOT_SIZE bytes, at slots + ((as << 15) | id) * SLOT_SIZE) ----
export const SLOT_SIZE: u32 = 64;
export const SLOT_BASE_GFN: u32 = 0; // u64
export const SLOT_NPAGES: u32 = 8; // u64
export const SLOT_FLAGS: u32 = 16; // u32: KVM_MEM_* flags
export const SLOT_ACTIVE: u32 = 20; // u32: 1 while the slot exists
export const SLOT_BITMAP: u32 = 24; // u32: live dirty bitmap, 0 = no bitmap
export const SLOT_META: u32 = 28; // u32: metadata region (see memslot.ts)
export const SLOT_BACKING: u32 = 32; // u32: guest bytes, 0 = unbacked (tracking only)
export const SLOT_MAX_LEVEL: u32 = 36; // u32: largest mapping level the host backing allows
export const SLOT_HVA: u32 = 40; // u64: userspace address (alignment decides huge pages)
export const SLOT_RMAP: u32 = 52; // u32: 4K-level rmap heads, one u64 per page (shadow MMU), 0 = none
export const SLOT_WRITE_TRACK: u32 = 48; // u32: gfn_write_track (u16 per page) then the lpage disallow counters, 0 = none (page_track.ts)

// slot table and sorted-id arrays (sizes the host allocates)
export const SLOT_TABLE_ENTRIES: u32 = 65536; // KVM_NR_AS × 32768 ids
export const SORTED_BYTES: u32 = 131072; // KVM_NR_AS × 32768 u16

// ---- gfn_to_hva_cache (pfncache.ts), GHC_SIZE bytes wherever the host puts it ----
export const GHC_SIZE: u32 = 32;
export const GHC_GENERATION: u32 = 0; // u64: AS-0 memslot generation it was set up for
export const GHC_GPA: u32 = 8; // u64
export const GHC_HVA: u32 = 16; // u32: host address of gpa's byte (0: unbacked, no bytes behind it)
export const GHC_HVA_OK: u32 = 20; // u32: 0 = the error hva (no writable slot)
export const GHC_LEN: u32 = 24; // u32
export const GHC_MEMSLOT: u32 = 28; // u32: the slot for a one-page range, 0 = multi-page (slow path)

// ---- gfn_to_pfn_cache (pfncache.ts), GPC_SIZE bytes ----
export const GPC_SIZE: u32 = 64;
export const GPC_GENERATION: u32 = 0; // u64: AS-0 memslot generation of the last refresh
export const GPC_GPA: u32 = 8; // u64: INVALID_GPA when activated on a bare host address
export const GPC_UHVA: u32 = 16; // u64: userspace address (the slot's hva + offset); KVM_HVA_ERR_BAD = ~0
export const GPC_LOCK: u32 = 24; // u32: gpc->lock, an rwlock (readers use the mapping)
export const GPC_REFRESH_LOCK: u32 = 28; // u32: gpc->refresh_lock, a mutex (one refresher)
export const GPC_KHVA: u32 = 32; // u32: the kernel mapping of uhva's byte (0: unbacked, bytes dropped)
export const GPC_MEMSLOT: u32 = 36; // u32: the slot (gpa-activated), 0 otherwise
export const GPC_ACTIVE: u32 = 40; // u32
export const GPC_VALID: u32 = 44; // u32
export const GPC_NEXT: u32 = 48; // u32: next cache on kvm->gpc_list
export const GPC_VM: u32 = 52; // u32: the VM
export const GPC_PFN_OK: u32 = 56; // u32: pfn resolved (a KVM_PFN_ERR_* otherwise)

// ---- kvm_mmu_page (shadow.ts), SP_SIZE bytes per page-table page of a shadow-MMU VM ----
export const SP_SIZE: u32 = 128;
export const SP_GFN: u32 = 0; // u64: first gfn the page maps (direct) or the guest table's gfn
export const SP_ROLE: u32 = 8; // u32: union kvm_mmu_page_role (level 0-3, direct 7, smm 24-31, ...)
export const SP_IN_USE: u32 = 12; // u32: 1 while the page is a live shadow page
export const SP_PARENT_PTES: u32 = 16; // u64: pte_list of the SPTEs pointing at this page (rmap.ts)
export const SP_MMU_VALID_GEN: u32 = 24; // u32
export const SP_UNSYNC: u32 = 28; // u32
export const SP_UNSYNC_CHILDREN: u32 = 32; // u32
export const SP_WRITE_FLOODING: u32 = 36; // u32: writes to the guest table since a guest walk used the page
export const SP_GFNS: u32 = 40; // u32: indirect pages: a pool page of 512 u64, the gfn each SPTE maps (shadowed_translation)
export const SP_HASH_NEXT: u32 = 44; // u32: next page in its mmu_page_hash bucket
export const SP_ROOT_COUNT: u32 = 48; // u32: vCPUs using the page as their root
export const SP_SPECIAL: u32 = 52; // u32: a 32-bit guest's per-vCPU special root (pml4_root / pae_root), shadowing nothing
export const SP_INVALID_NEXT: u32 = 56; // u32: next page on the invalid list (VM_MMU_INVALID_LIST)
export const SP_UNSYNC_BITMAP: u32 = 64; // 512 bits

// ---- vCPU block ----
export const VCPU_SIZE: u32 = 640;
export const VCPU_ID: u32 = 0; // u32
export const VCPU_AS: u32 = 4; // u32: address space in use (1 while in SMM)
export const VCPU_EXIT_REASON: u32 = 8; // u32: run->exit_reason of the last call
export const VCPU_REQUESTS: u32 = 12; // u32: KVM_REQ_* bits
export const VCPU_MMIO_GPA: u32 = 16; // u64: run->mmio.phys_addr of the last MMIO exit
export const VCPU_FAST_FAULTS: u32 = 24; // u64
export const VCPU_SLOW_FAULTS: u32 = 32; // u64
export const VCPU_STORES: u32 = 40; // u64
export const VCPU_RING: u32 = 48; // u32: kvm_dirty_gfn array shared with userspace (0 = no ring)
export const VCPU_RING_PRIV: u32 = 52; // u32: the core's private copy of each entry's slot/offset
export const VCPU_RING_ENTRIES: u32 = 56; // u32: ring->size (entries, a power of two)
export const VCPU_RING_SOFT_LIMIT: u32 = 60; // u32: ring->soft_limit
export const VCPU_DIRTY_INDEX: u32 = 64; // u32: ring->dirty_index (free-running, vCPU thread only)
export const VCPU_RESET_INDEX: u32 = 68; // u32: ring->reset_index (free-running, resetter only)
export const VCPU_RING_FULL_EXITS: u32 = 72; // u64: KVM_EXIT_DIRTY_RING_FULL exits
export const VCPU_RING_PUSHES: u32 = 80; // u64: entries pushed
export const VCPU_PML_BUF: u32 = 88; // u32: PML buffer, 512 u64 GPAs (0 = no PML)
export const VCPU_PML_INDEX: u32 = 92; // u32: GUEST_PML_INDEX, 511 = empty, > 511 = full (u16 wrap)
export const VCPU_PML_FULL_EXITS: u32 = 96; // u64: EXIT_REASON_PML_FULL exits
export const VCPU_MODE: u32 = 104; // u32: vcpu->mode (OUTSIDE_GUEST_MODE, IN_GUEST_MODE, ...)
export const VCPU_TLB: u32 = 108; // u32: this vCPU's TLB (TLB_ENTRIES × 16 bytes)
export const VCPU_RNG: u32 = 112; // u64: workload xorshift64* state
export const VCPU_TLB_FLUSHES: u32 = 120; // u64: local TLB flushes performed
// guest workload (workload.ts)
export const VCPU_WL_KIND: u32 = 128; // u32: WL_* generator
export const VCPU_WL_BATCH: u32 = 132; // u32: stores per KVM_RUN before KVM_EXIT_IO
export const VCPU_WL_BASE: u32 = 136; // u64: first gpa of the vCPU's region
export const VCPU_WL_PAGES: u32 = 144; // u32: pages in the region
export const VCPU_WL_STRIDE: u32 = 148; // u32: pages between strided stores
export const VCPU_WL_CURSOR: u32 = 152; // u32: next page of sequential / strided walks
export const VCPU_WL_HOT_PAGES: u32 = 156; // u32: hot-set size in pages
export const VCPU_WL_HOT_FRAC: u32 = 160; // u32: share of stores to the hot set, in 1/65536
export const VCPU_WL_ZIPF: u32 = 164; // u32: address of a u32 CDF over the region's pages
export const VCPU_WL_PENDING: u32 = 168; // u64: gpa + 1 of a store that has not retired (0 = none)
export const VCPU_WL_LIMIT: u32 = 176; // u64: stores after which the guest shuts down (0 = never)
export const VCPU_WL_DONE: u32 = 184; // u64: stores the workload retired
export const VCPU_LAST_GPA: u32 = 192; // u64: gpa of the last store that retired
export const VCPU_READ_VALUE: u32 = 200; // u64: result of kvm_vcpu_read
// host-side vCPU thread control (src/vcpu-thread.ts; the core never reads these)
export const VCPU_CTL: u32 = 208; // u32: VCPU_CTL_* state of the vCPU's worker loop
export const VCPU_WAKE: u32 = 212; // u32: futex word the worker sleeps on (bumped on reset/resume)
export const VCPU_PSC_TAG: u32 = 216; // u64: paging-structure cache tag ((gfn >> 9) << 1 | as) + 1, 0 = empty
export const VCPU_PSC_TABLE: u32 = 224; // u32: the cached leaf (4K) page table
export const VCPU_LAST_SLOT: u32 = 228; // u32 × KVM_NR_AS: last memslot the fast path used (0 = none)
export const VCPU_STALL_NS: u32 = 240; // u64: ns the vCPU's loop waited on a full ring (host-side, src/vcpu-worker.ts)
export const VCPU_MUTEX: u32 = 236; // u32: vcpu->mutex, the tag of the thread driving the vCPU (0 = free), see vcpu.ts
export const VCPU_DIRTY_PUBLISHED: u32 = 248; // u32: dirty_index as last published to the resetter (at VM exits, see dirty_ring.ts)
// Xen runstate area (xen.ts): two pfn caches for a structure that may cross a page
export const VCPU_XEN_GPC1: u32 = 256; // GPC_SIZE: runstate_cache (the first page)
export const VCPU_XEN_GPC2: u32 = 320; // GPC_SIZE: runstate2_cache (the rest, when it crosses)
export const VCPU_XEN_RS_GPA: u32 = 384; // u64: runstate area gpa (INVALID_GPA = none)
export const VCPU_XEN_RS_COMPAT: u32 = 392; // u32: 1 = 32-bit layout (0x2c bytes)
export const VCPU_XEN_RS_STATE: u32 = 396; // u32: current_runstate
export const VCPU_XEN_RS_ENTRY: u32 = 400; // u64: runstate_entry_time (ns)
export const VCPU_XEN_RS_TIMES: u32 = 408; // u64 × 4: runstate_times (ns per state)
export const VCPU_XEN_RS_UPDATES: u32 = 440; // u32: guest copies written
export const VCPU_XEN_RS_SKIPPED: u32 = 444; // u32: guest copies skipped (atomic context, lock or cache)
export const VCPU_XEN_RS_BUF: u32 = 448; // 48 bytes: the structure as it is copied out
// throttling, host side only (src/vcpu-worker.ts; the core never touches them)
export const VCPU_THROTTLE_US: u32 = 496; // u32: dirty-limit sleep at each ring-full exit, µs (QEMU's throttle_us_per_full)
export const VCPU_THROTTLE_PCT: u32 = 500; // u32: auto-converge throttle, % of each 10 ms timeslice slept (cpu-throttle)
export const VCPU_THROTTLE_NS: u32 = 504; // u64: ns the vCPU's loop slept for either throttle (not in VCPU_STALL_NS)
// guest paging (guest_walk.ts): the guest's CR3 and mode; accesses take guest-virtual addresses
export const VCPU_CR3: u32 = 512; // u64: the guest's CR3 (gpa of its top-level page table)
export const VCPU_PAGING: u32 = 520; // u32: PAGING_OFF (gva = gpa) or PAGING_LONG (4-level, 8-byte gPTEs)
export const VCPU_ROOT: u32 = 524; // u32: the shadow MMU's root for this CR3 (0 = none loaded: the VM's direct root)
export const VCPU_FAULT_ADDR: u32 = 528; // u64: the gva of the last guest page fault (KVM_EXIT_EXCEPTION)
export const VCPU_WALK: u32 = 536; // 64 bytes: the last guest walk (WALK_*)
export const VCPU_ROOT_GEN: u32 = 600; // u32: the mmu_valid_gen of the shadow MMU when the vCPU last took its root (the VM's direct root, unpaged)
export const WALK_GPA: u32 = 0; // u64: the translated gpa
export const WALK_TABLE_GFN: u32 = 8; // u64 × 4: [level - 1] = gfn of the guest table holding the level's gPTE
export const WALK_WRITABLE: u32 = 40; // u32: every level allows writes
export const PAGING_OFF: u32 = 0;
export const PAGING_LONG: u32 = 1;
export const PAGING_32BIT: u32 = 2; // 2-level, 4-byte gPTEs (non-PAE)

// vcpu->mode (include/linux/kvm_host.h)
// vcpu->mutex tag of the VM owner's thread (src/core.ts HOST_TAG); vCPU workers have others
export const VCPU_HOST_TAG: u32 = 1;
export const OUTSIDE_GUEST_MODE: u32 = 0;
export const IN_GUEST_MODE: u32 = 1;
export const TLB_ENTRIES: u32 = 2048;

// ---- vCPU requests (kvm_make_request bit numbers) ----
export const KVM_REQ_TLB_FLUSH: u32 = 0;
export const KVM_REQ_DIRTY_RING_SOFT_FULL: u32 = 3;
export const KVM_REQ_MMU_FREE_OBSOLETE_ROOTS: u32 = 4; // (an arch request in the kernel; dirtlog's bit)
export const KVM_REQ_KICK: u32 = 30; // dirtlog: an IPI; the vCPU exits (draining PML) and re-enters
export const KVM_REQ_EXIT: u32 = 31; // dirtlog: a signal / immediate_exit, KVM_RUN returns KVM_EXIT_INTR

// ---- dirty ring ----
export const KVM_DIRTY_GFN_F_DIRTY: u32 = 1;
export const KVM_DIRTY_GFN_F_RESET: u32 = 2;
export const KVM_DIRTY_RING_RSVD_ENTRIES: u32 = 64;
export const KVM_DIRTY_RING_MAX_ENTRIES: u32 = 65536;
export const PML_LOG_NR_ENTRIES: u32 = 512;
export const KVM_MAX_VCPU_IDS: u32 = 4096;

// ---- page tables ----
export const PAGE_SHIFT: u32 = 12;
export const PAGE_SIZE: u32 = 4096;
export const PT_ENTRIES: u32 = 512;
export const PT_LEVELS: u32 = 4;
