// Fault injection must lose pages, never progress: with remote TLB flushes skipped
// (setDebug({ skipTlbFlush: true })) a memslot MOVE still flushes, because its zap frees
// page-table pages that a vCPU's paging-structure cache may still point at.
// Imports the built package: vCPU loops run in workers (dist/vcpu-worker.js), so a
// livelocked vCPU cannot hang the test thread.
import { describe, expect, it } from "vitest";
import { KVM_MEM_LOG_DIRTY_PAGES, createVm } from "../dist/index.js";

const PAGE = 4096;
const PAGES = 768; // gfn 0..767 = 2M regions 0 and 1; moved to gfn 768..1535 = regions 1 and 2
const A = 0;
const B = PAGES * PAGE;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(5)) if (cond()) return true;
  return cond();
}

describe("skipTlbFlush fault injection", () => {
  it("a memslot MOVE still flushes: no vCPU livelocks on a freed page table", async () => {
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    const region = (gpa: number) => ({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: gpa, memorySize: PAGES * PAGE, backed: true });
    vm.setUserMemoryRegion(region(A));
    const v0 = vm.createVcpu(0); // worker thread
    const v1 = vm.createVcpu(1); // main thread
    try {
      // vCPU 0 writes region 1 only: its last slow fault leaves region 1's leaf table in its
      // paging-structure cache (no GET, so no flush empties it)
      v0.setWorkload({ pattern: "uniform", gpa: A + 512 * PAGE, pages: 256, batch: 1024 });
      await v0.startLoop();
      expect(await until(() => v0.workloadStores > 20_000n, 10_000)).toBe(true);
      vm.setDebug({ skipTlbFlush: true });
      await v0.pause();
      const before = vm.stats.tlbFlushes;
      vm.setUserMemoryRegion(region(B)); // KVM_MR_MOVE: zap all, free the page tables
      expect(vm.stats.zaps).toBe(1n);
      expect(vm.stats.tlbFlushes).toBe(before + 1n);
      // vCPU 1 faults first, at gfn 1024 (region 2): the pool hands the freed region-1 leaf
      // table out again, as region 2's
      expect(v1.writeGuest(B + 256 * PAGE, 7)).toBe(0);
      // vCPU 0 now writes region 1 of the moved slot (gfn 768..1023)
      v0.setWorkload({ pattern: "uniform", gpa: B, pages: 256, batch: 1024 });
      v0.resume();
      const progressed = await until(() => v0.workloadStores > 1000n, 3000);
      if (!progressed) {
        // livelocked on the stale table: map the entries it reads there (gfn 1280..1535)
        // so that it escapes and the VM can be closed
        v1.writeStrided(B + 512 * PAGE, PAGE, 256, 0);
      }
      expect(progressed).toBe(true);
      expect(vm.spte(0, B + 256 * PAGE).level).toBe(1);
      await vm.close();
    } finally {
      vm.dispose();
    }
  });
});
