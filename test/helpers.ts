// Helpers shared by the spec tests: reading bitmaps and SPTEs, catching KvmError.
import { afterEach, expect } from "vitest";
import { ERRNO, type ErrnoName, KvmError, type Vcpu, type Vm, type VmOptions, createVm } from "../src/index.js";

/** EPT bits of a leaf SPTE (assembly/spte.ts). */
export const SPTE_W = 1n << 1n;
export const SPTE_HOST_WRITABLE = 1n << 57n;
export const SPTE_MMU_WRITABLE = 1n << 58n;

/** Indices of the set bits of a dirty log (bit p = page p, little-endian). */
export function pagesOf(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bitmap.length * 8; i++) if ((bitmap[i >> 3] >> (i & 7)) & 1) out.push(i);
  return out;
}

/** The errno of the KvmError `fn` throws (its code checked against the name), or undefined. */
export function errnoOf(fn: () => unknown): ErrnoName | undefined {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    expect(e.code).toBe(ERRNO[e.errno]);
    return e.errno;
  }
  return undefined;
}

/** (host-writable, MMU-writable, W) of the leaf mapping gpa as a string like "110", and its level (0 = none). */
export function triple(vm: Vm, gpa: number, as = 0): { hmw: string; level: number } {
  const { spte, level } = vm.spte(as, gpa);
  const b = (m: bigint) => (spte & m ? "1" : "0");
  return { hmw: b(SPTE_HOST_WRITABLE) + b(SPTE_MMU_WRITABLE) + b(SPTE_W), level };
}

/** Faults a vCPU has taken (fast + slow). */
export function faults(vcpu: Vcpu): bigint {
  const s = vcpu.stats;
  return s.fastFaults + s.slowFaults;
}

/**
 * For a test file: `newVm(options)` creates a VM (256 MiB, 2 MiB of page tables unless the
 * options say otherwise) and `track(x)` registers anything else to dispose; everything is
 * disposed after each test.
 */
export function vmFactory(): { newVm(options?: VmOptions): Promise<Vm>; track(x: { dispose(): void }): void } {
  const live: Array<{ dispose(): void }> = [];
  afterEach(() => {
    for (const x of live.splice(0)) x.dispose();
  });
  return {
    async newVm(options: VmOptions = {}) {
      const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20, ...options });
      live.push(vm);
      return vm;
    },
    track(x) {
      live.push(x);
    },
  };
}
