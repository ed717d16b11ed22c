// KvmError: every rejected call throws one, carrying KVM's errno name and number.

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  ENOMEM: 12,
  EFAULT: 14,
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

  constructor(errno: ErrnoName, call: string) {
    super(`${call}: ${errno}`);
    this.name = "KvmError";
    this.errno = errno;
    this.code = ERRNO[errno];
  }

  /** From a core return value -errno. */
  static fromReturn(ret: number, call: string): KvmError {
    return new KvmError(NAMES.get(-ret) ?? "EIO", call);
  }
}

/** Throw the KvmError for a negative core return value; pass others through. */
export function check(ret: number, call: string): number {
  if (ret < 0) throw KvmError.fromReturn(ret, call);
  return ret;
}
