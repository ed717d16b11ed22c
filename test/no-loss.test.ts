// No dirty page is ever lost: the kernel's dirty_log_test logic (spec §7.1) over every
// tracking mode, with real vCPU worker threads writing while the collector harvests.
// Imports the built package: vCPU workers are dist/vcpu-worker.js.
import { describe, expect, it } from "vitest";
import { type DirtyLogTestOptions, runDirtyLogTest } from "../dist/index.js";
import { plantedCore } from "./planted-core.js";

const modes: Array<[string, DirtyLogTestOptions]> = [
  ["dirty-log (classic GET)", { mode: "dirty-log" }],
  ["clear-log (manual protect + INITIALLY_SET, GET + CLEAR)", { mode: "clear-log" }],
  ["dirty-ring, 256 entries (ring-full exits all the time)", { mode: "dirty-ring", ringEntries: 256 }],
  ["dirty-ring, 1024 entries", { mode: "dirty-ring", ringEntries: 1024 }],
  ["dirty-ring, 4096 entries", { mode: "dirty-ring", ringEntries: 4096 }],
  ["dirty-log with PML", { mode: "dirty-log", pml: true }],
  ["clear-log with PML", { mode: "clear-log", pml: true }],
  ["dirty-ring 1024 with PML", { mode: "dirty-ring", ringEntries: 1024, pml: true }],
  ["dirty-log without the TLB model", { mode: "dirty-log", tlb: false }],
  // the shadow MMU: re-protection through the rmaps, faults under the write side of mmu_lock
  ["dirty-log, shadow MMU", { mode: "dirty-log", mmu: "shadow" }],
  ["clear-log, shadow MMU", { mode: "clear-log", mmu: "shadow" }],
  ["dirty-ring 256, shadow MMU", { mode: "dirty-ring", ringEntries: 256, mmu: "shadow" }],
  ["dirty-ring 4096, shadow MMU", { mode: "dirty-ring", ringEntries: 4096, mmu: "shadow" }],
  // a paged guest: the CPU's walk of the guest's tables (TDP), shadow pages of them (shadow)
  ["dirty-log, paged guest, TDP MMU", { mode: "dirty-log", paging: true }],
  ["dirty-log, paged guest, shadow MMU", { mode: "dirty-log", mmu: "shadow", paging: true }],
  ["dirty-ring 1024, paged guest, shadow MMU", { mode: "dirty-ring", ringEntries: 1024, mmu: "shadow", paging: true }],
  // a 32-bit guest: 4-byte gPTEs, each table shadowed by several pages (role.quadrant)
  ["dirty-log, 32-bit paged guest, shadow MMU", { mode: "dirty-log", mmu: "shadow", paging: "32bit" }],
  ["dirty-ring 1024, 32-bit paged guest, TDP MMU", { mode: "dirty-ring", ringEntries: 1024, paging: "32bit" }],
  // a slot deleted at every step: each DELETE zaps everything under the running vCPUs (the
  // shadow MMU's in batches, letting their faults in between)
  ["dirty-log, memslot churn, TDP MMU", { mode: "dirty-log", memslotChurn: true }],
  ["dirty-log, memslot churn, shadow MMU", { mode: "dirty-log", mmu: "shadow", memslotChurn: true }],
  [
    "dirty-ring 1024, memslot churn, paged guest, shadow MMU",
    { mode: "dirty-ring", ringEntries: 1024, mmu: "shadow", paging: true, memslotChurn: true },
  ],
];

describe("no lost dirty page (dirty_log_test, 2 vCPU workers, 32 iterations)", () => {
  for (const [name, options] of modes) {
    it(name, async () => {
      const r = await runDirtyLogTest({ ...options, vcpus: 2, iterations: 32 });
      console.log(
        `${r.mode}: ${r.pagesChecked} page checks, ${r.dirtyPages} reported, ${r.writes} writes, ` +
          `${r.ringFullExits} ring-full exits, ${r.harvests} harvests, lost ${r.lost}` +
          (options.memslotChurn ? `, ${r.memslotDeletes} slot deletes, ${r.mmuLockBreaks} mmu_lock breaks` : ""),
      );
      if (options.memslotChurn) expect(r.memslotDeletes).toBeGreaterThanOrEqual(32);
      expect(r.firstError).toBeUndefined();
      expect(r.lost).toBe(0);
      expect(r.wrongValue).toBe(0);
      expect(r.ringFullWarnings).toBe(0);
      expect(r.pagesChecked).toBe(32 * ((1 << 14) + 3));
      expect(r.writes).toBeGreaterThan(32n * 0x100n);
      if (options.mode === "dirty-ring" && (options.ringEntries ?? 0) <= 1024) expect(r.ringFullExits).toBeGreaterThan(0n);
    });
  }

  it("the shadow MMU's zap of everything lets the faulting vCPUs in between its batches of 10", async () => {
    // after each DELETE's zap the vCPUs fault everything in again, waiting for mmu_lock:
    // the zap of the next DELETE finds them waiting (a scheduling matter: up to 3 runs)
    let breaks = 0;
    for (let run = 0; run < 3 && breaks === 0; run++) {
      const r = await runDirtyLogTest({ mode: "dirty-log", mmu: "shadow", vcpus: 2, iterations: 8, memslotChurn: true });
      expect(r.lost).toBe(0);
      breaks = r.mmuLockBreaks;
    }
    expect(breaks).toBeGreaterThan(0);
  });

  it("a main-thread caller hammering running vCPUs gets EBUSY and loses nothing", async () => {
    const r = await runDirtyLogTest({ mode: "dirty-ring", ringEntries: 1024, vcpus: 2, iterations: 8, mainThreadHammer: true });
    console.log(`hammer: ${r.hammerEbusy} EBUSY of ${r.hammerCalls} calls; lost ${r.lost}`);
    expect(r.firstError).toBeUndefined();
    expect(r.lost).toBe(0);
    expect(r.wrongValue).toBe(0);
    expect(r.hammerCalls).toBeGreaterThan(0);
    // right after a resume the loop may not have taken the vCPU back yet: a call that gets
    // in then is serialised by vcpu->mutex (and checked like any write); the rest are EBUSY
    expect(r.hammerEbusy).toBeGreaterThan(r.hammerCalls / 2);
  });

  it("the harness catches lost pages: with remote TLB flushes never delivered, pages are lost", async () => {
    // vCPUs keep writing through stale writable translations after GET re-protects:
    // exactly the bug class kvm_flush_remote_tlbs prevents.
    // 131 pages fit in the 2048-entry TLB: stale entries are never evicted
    const r = await runDirtyLogTest({ mode: "dirty-log", vcpus: 2, iterations: 32, pages: 128 + 3, skipTlbFlush: true });
    expect(r.lost).toBeGreaterThan(0);
  });

  describe("with KVM's own writes (Xen runstate areas updated around every KVM_RUN; cached writes in the bitmap modes)", () => {
    const kvmModes: Array<[string, DirtyLogTestOptions]> = [
      ["dirty-log", { mode: "dirty-log" }],
      ["clear-log", { mode: "clear-log" }],
      ["dirty-ring, 1024 entries", { mode: "dirty-ring", ringEntries: 1024 }],
      ["dirty-ring 4096 with PML", { mode: "dirty-ring", ringEntries: 4096, pml: true }],
      ["dirty-log with PML", { mode: "dirty-log", pml: true }],
    ];
    for (const [name, options] of kvmModes) {
      it(name, async () => {
        const r = await runDirtyLogTest({ ...options, vcpus: 2, iterations: 16, kvmWrites: true });
        console.log(`${r.mode} + KVM writes: ${r.kvmWrites} KVM writes, ${r.kvmPagesChecked} KVM page checks, lost ${r.lost}`);
        expect(r.firstError).toBeUndefined();
        expect(r.lost).toBe(0);
        expect(r.wrongValue).toBe(0);
        expect(r.ringFullWarnings).toBe(0);
        expect(r.kvmPagesChecked).toBe(16 * 6);
        expect(r.kvmWrites).toBeGreaterThan(16); // more than one per iteration
      });
    }

    it.skipIf(process.env.DIRTLOG_CORE === "debug")("the harness catches KVM writes that are not marked (a planted core)", async () => {
      const wasm = plantedCore(
        [
          {
            file: "pfncache.ts",
            from: "  if (slot == 0) return;\n  mark_page_dirty_in_slot(",
            to: "  if (slot == 0 || slot != 0) return;\n  mark_page_dirty_in_slot(",
          },
        ],
        "release",
      );
      const r = await runDirtyLogTest({ mode: "dirty-ring", ringEntries: 1024, vcpus: 2, iterations: 4, kvmWrites: true, wasm });
      expect(r.lost).toBeGreaterThan(0);
      expect(r.firstError).toMatch(/KVM's page/);
    });
  });
});
