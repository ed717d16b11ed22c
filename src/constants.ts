// KVM's constants under their kernel names and values (include/uapi/linux/kvm.h).

export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;
export const KVM_MEM_GUEST_MEMFD = 1 << 2;

export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0;
export const KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1;
export const KVM_DIRTY_LOG_MANUAL_CAPS = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;

export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_READONLY_MEM = 81;
export const KVM_CAP_MULTI_ADDRESS_SPACE = 118;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT = 166;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
export const KVM_CAP_DIRTY_LOG_RING = 192;
export const KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223;
export const KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225;

/** The guest took a page fault dirtlog's guest cannot handle (a paged guest; vcpu.faultAddress). */
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
/** dirtlog's own exit (not KVM's): a write to a write-tracked page found the page-track event queue full. */
export const KVM_EXIT_PAGE_TRACK_FULL = 0x10001;

export const KVM_USER_MEM_SLOTS = 32764;
export const KVM_MEM_SLOTS_NUM = 32767;
export const TSS_PRIVATE_MEMSLOT = 32764;
export const APIC_ACCESS_PAGE_PRIVATE_MEMSLOT = 32765;
export const IDENTITY_PAGETABLE_PRIVATE_MEMSLOT = 32766;
export const APIC_DEFAULT_PHYS_BASE = 0xfee00000;
export const KVM_MAX_VCPU_IDS = 4096;

export const KVM_MR_CREATE = 0;
export const KVM_MR_DELETE = 1;
export const KVM_MR_MOVE = 2;
export const KVM_MR_FLAGS_ONLY = 3;
export const KVM_MR_NONE = 4;
/** dirtlog: a MOVE rejected after the INVALID publish and zap (see assembly/layout.ts). */
export const KVM_MR_MOVE_REJECTED = 5;

export const KVM_DIRTY_GFN_F_DIRTY = 1 << 0;
export const KVM_DIRTY_GFN_F_RESET = 1 << 1;
export const KVM_DIRTY_GFN_F_MASK = 0x3;
/** sizeof(struct kvm_dirty_gfn) */
export const KVM_DIRTY_GFN_SIZE = 16;
export const KVM_DIRTY_RING_RSVD_ENTRIES = 64;
export const KVM_DIRTY_RING_MAX_ENTRIES = 65536;
/** vCPU mmap page offset of the ring on x86 (byte offset 0x40000). */
export const KVM_DIRTY_LOG_PAGE_OFFSET = 64;
export const PML_LOG_NR_ENTRIES = 512;
