// The debug build of the core asserts the locking rules (assembly/mmu_lock.ts
// lockdep_assert_held_write, assembly/vcpu.ts lockdep_assert_vcpu_held); the release build
// has none of them (test/wasm-sections.test.ts: no abort import). Planted cores show that
// the asserts fire when a rule is broken, and the unplanted debug core that they do not
// fire on the same path when it is kept.
import { describe, expect, it } from "vitest";
import { KVM_CAP_DIRTY_LOG_RING, KVM_MEM_LOG_DIRTY_PAGES, collectDirtyRing, createVm } from "../src/index.js";
import { type Plant, plantedCore, unplantedCore } from "./planted-core.js";

const PAGE = 4096;

/** A ring VM: one vCPU writes 4 pages from this thread, then collect + KVM_RESET_DIRTY_RINGS. */
async function ringRound(wasm: WebAssembly.Module): Promise<number> {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, wasm });
  try {
    vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096 * 16]);
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 64 * PAGE });
    const v = vm.createVcpu(0);
    for (let p = 0; p < 4; p++) expect(v.writeGuest(p * PAGE, 1)).toBe(0);
    collectDirtyRing(v, () => {});
    return vm.resetDirtyRings();
  } finally {
    vm.dispose();
  }
}

const noMmuLockInReset: Plant[] = [
  { file: "dirty_ring.ts", from: "  write_lock(vm);\n  kvm_mmu_reprotect_begin", to: "  kvm_mmu_reprotect_begin" },
  { file: "dirty_ring.ts", from: "  write_unlock(vm);\n  return count;", to: "  return count;" },
];
const noVcpuMutexInWrite: Plant[] = [
  {
    file: "fault.ts",
    from: "export function kvm_vcpu_write(vm: usize, vcpu: usize, tag: u32, gpa: u64, value: u64): i32 {\n  const loaded = vcpu_load(vcpu, tag);",
    to: "export function kvm_vcpu_write(vm: usize, vcpu: usize, tag: u32, gpa: u64, value: u64): i32 {\n  const loaded: i32 = 0;",
  },
];

describe.skipIf(process.env.DIRTLOG_CORE === "debug")("lockdep asserts (debug build)", () => {
  it("the unplanted debug core runs the ring round without an assert", async () => {
    expect(await ringRound(unplantedCore("debug"))).toBe(4);
  });

  it("a ring reset without mmu_lock trips lockdep_assert_held_write", async () => {
    await expect(ringRound(plantedCore(noMmuLockInReset, "debug"))).rejects.toThrow(
      /core assertion failed: mmu_lock is not held for write/,
    );
  });

  it("a guest write that skips vcpu->mutex trips lockdep_assert_vcpu_held at the ring push", async () => {
    await expect(ringRound(plantedCore(noVcpuMutexInWrite, "debug"))).rejects.toThrow(
      /core assertion failed: vcpu->mutex is not held/,
    );
  });

  it("the release build of the same planted core does not check (asserts compile out)", async () => {
    expect(await ringRound(plantedCore(noMmuLockInReset, "release"))).toBe(4);
  });
});
