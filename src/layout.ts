// Host mirror of assembly/layout.ts: the field offsets the host reads or writes directly.
// test/layout.test.ts checks every value here against the core's file.

export const VM_SIZE = 4096;
export const VM_GEN = 0;
export const VM_SLOTS = 16;
export const VM_POOL_PAGES = 44;
export const VM_POOL_USED = 60;
export const VM_MANUAL_PROTECT = 64;
export const VM_RING_SIZE = 68;
export const VM_RING_WITH_BITMAP = 72;
export const VM_NR_LOGGING = 84;
export const VM_TLB_FLUSHES = 88;
export const VM_NR_VCPUS = 96;
export const VM_RING_WARN = 100;
export const VM_ZAPS = 104;
export const VM_SPLITS = 112;
export const VM_VCPU_TABLE = 120;
export const VM_NO_VCPU_WARN = 124;
export const VM_ITERATION = 128;
export const VM_TLB_MODEL = 136;
export const VM_DEBUG = 140;
export const VM_DEBUG_SKIP_TLB_FLUSH = 1;

export const SLOT_SIZE = 64;
export const SLOT_BASE_GFN = 0;
export const SLOT_NPAGES = 8;
export const SLOT_FLAGS = 16;
export const SLOT_ACTIVE = 20;
export const SLOT_BITMAP = 24;
export const SLOT_META = 28;
export const SLOT_BACKING = 32;

export const VCPU_SIZE = 256;
export const VCPU_AS = 4;
export const VCPU_EXIT_REASON = 8;
export const VCPU_MMIO_GPA = 16;
export const VCPU_FAST_FAULTS = 24;
export const VCPU_SLOW_FAULTS = 32;
export const VCPU_STORES = 40;
export const VCPU_RING = 48;
export const VCPU_RING_ENTRIES = 56;
export const VCPU_RING_SOFT_LIMIT = 60;
export const VCPU_DIRTY_INDEX = 64;
export const VCPU_RESET_INDEX = 68;
export const VCPU_RING_FULL_EXITS = 72;
export const VCPU_RING_PUSHES = 80;
export const VCPU_PML_FULL_EXITS = 96;
export const VCPU_MODE = 104;
export const VCPU_REQUESTS = 12;
export const VCPU_RNG = 112;
export const VCPU_TLB_FLUSHES = 120;
export const VCPU_WL_KIND = 128;
export const VCPU_WL_BATCH = 132;
export const VCPU_WL_BASE = 136;
export const VCPU_WL_PAGES = 144;
export const VCPU_WL_STRIDE = 148;
export const VCPU_WL_CURSOR = 152;
export const VCPU_WL_HOT_PAGES = 156;
export const VCPU_WL_HOT_FRAC = 160;
export const VCPU_WL_ZIPF = 164;
export const VCPU_WL_PENDING = 168;
export const VCPU_WL_LIMIT = 176;
export const VCPU_WL_DONE = 184;
export const VCPU_LAST_GPA = 192;
export const VCPU_CTL = 208;
export const VCPU_WAKE = 212;
export const TLB_ENTRIES = 2048;
export const KVM_REQ_EXIT = 31;

export const KVM_NR_AS = 2;
export const PAGE_SIZE = 4096;
/** Address-space stride of the slot table: (as_id << 15) | id. */
export const SLOT_TABLE_ENTRIES = 2 * 32768;
/** Bytes of the sorted-id arrays: 32768 u16 per address space. */
export const SORTED_BYTES = 2 * 65536;
