// KvmError: every rejected call throws one, carrying KVM's errno name and number, the call
// and the reason: "KVM_SET_USER_MEMORY_REGION: EINVAL: guestPhysAddr 0x1001 is not page-aligned".

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  EAGAIN: 11,
  E2BIG: 7,
  EBADF: 9,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const NAMES = new Map<number, ErrnoName>(Object.entries(ERRNO).map(([k, v]) => [v, k as ErrnoName]));

export class KvmError extends Error {
  /** The errno name, e.g. 'EINVAL'. */
  readonly errno: ErrnoName;
  /** The errno number, e.g. 22 (the ioctl would return its negation). */
  readonly code: number;
  /** The call that was rejected, e.g. 'KVM_SET_USER_MEMORY_REGION'. */
  readonly call: string;
  /** Why, in words (may be empty). */
  readonly reason: string;

  constructor(errno: ErrnoName, call: string, reason = "") {
    super(reason ? `${call}: ${errno}: ${reason}` : `${call}: ${errno}`);
    this.name = "KvmError";
    this.errno = errno;
    this.code = ERRNO[errno];
    this.call = call;
    this.reason = reason;
  }

  /** From a core return value -errno. */
  static fromReturn(ret: number, call: string, reason = ""): KvmError {
    return new KvmError(NAMES.get(-ret) ?? "EIO", call, reason);
  }
}

/** Throw the KvmError for a negative core return value; pass others through. */
export function check(ret: number, call: string, reason: string | (() => string) = ""): number {
  if (ret < 0) throw KvmError.fromReturn(ret, call, typeof reason === "function" ? reason() : reason);
  return ret;
}

/** Words for the core's ERR_* codes (assembly/layout.ts), keyed by code. */
export const CORE_REASONS: Readonly<Record<number, string>> = {
  1: "flags has bits other than KVM_MEM_LOG_DIRTY_PAGES and KVM_MEM_READONLY",
  2: "the slot id is beyond the 32764 user memslots",
  3: "internal memslots take ids 32764..32766 and no flags",
  4: "guestPhysAddr and memorySize must be page-aligned",
  5: "the address space id (slot >> 16) must be 0 or 1",
  6: "guestPhysAddr + memorySize wraps past 2^64",
  7: "memorySize is above KVM_MEM_MAX_NR_PAGES pages",
  8: "memorySize 0 deletes a slot, and this slot does not exist",
  9: "an existing memslot cannot change its size",
  10: "an existing memslot cannot change KVM_MEM_READONLY",
  11: "an existing memslot cannot change its backing",
  12: "the range overlaps another memslot of the address space",
  13: "the slot's last page is beyond the 48-bit guest physical space",
  14: "the VM uses the dirty ring without a bitmap (KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP)",
  15: "no such memslot, or it does not log dirty pages",
  16: "firstPage must be a multiple of 64",
  17: "the range must lie in the slot and numPages be a multiple of 64 unless it reaches the end",
  18: "KVM does not move memslots while an external page-track user (a registered notifier) is attached",
  19: "no memslot in address space 0 holds the gfn",
  20: "write tracking is not enabled: register a page-track notifier first (the kernel would KVM_BUG_ON here)",
};
