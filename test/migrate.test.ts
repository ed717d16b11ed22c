// Live migration (pre-copy while vCPU workers write, then stop-and-copy) must leave the
// destination equal to the source byte for byte, in every tracking mode.
import { describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_EXIT_INTR,
  KVM_MEM_LOG_DIRTY_PAGES,
  type Vm,
  createVm,
  hashMemory,
  migrate,
  splitRegion,
} from "../dist/index.js";

const GPA = 0x1_0000_0000;
const PAGES = 8192; // 32 MiB, backed

interface Mode {
  name: string;
  ring?: number;
  manual?: boolean;
  pml?: boolean;
  logFromStart?: boolean;
  shadow?: boolean;
}

const modes: Mode[] = [
  { name: "dirty-log (classic GET)" },
  { name: "clear-log (manual protect + INITIALLY_SET)", manual: true, logFromStart: true },
  { name: "dirty-ring 1024", ring: 1024 },
  { name: "dirty-ring 4096", ring: 4096 },
  { name: "dirty-log with PML", pml: true },
  { name: "dirty-ring 2048 with PML", ring: 2048, pml: true },
  { name: "dirty-log, shadow MMU", shadow: true },
  { name: "dirty-ring 1024, shadow MMU", ring: 1024, shadow: true },
];

async function setup(mode: Mode): Promise<Vm> {
  const vm = await createVm({
    maxMemoryBytes: 256 << 20,
    mmuPoolBytes: 4 << 20,
    pml: mode.pml,
    mmu: mode.shadow ? "shadow" : "tdp",
  });
  if (mode.manual) {
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET]);
  }
  if (mode.ring) vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [mode.ring * 16]);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: mode.logFromStart ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    guestPhysAddr: GPA,
    memorySize: PAGES * 4096,
    backed: true,
  });
  const regions = splitRegion(GPA, PAGES, 2, true);
  const vcpus = [vm.createVcpu(0), vm.createVcpu(1)];
  // a hot set (80 % of writes to 5 % of pages) over the whole slot, shared by both vCPUs
  vcpus[0].setWorkload({ pattern: "hot-set", ...regions[0], hotPages: Math.floor(PAGES / 20), hotFraction: 0.8, batch: 512 });
  vcpus[1].setWorkload({ pattern: "uniform", ...regions[1], batch: 512 });
  return vm;
}

describe("migrate(): pre-copy with vCPU workers writing, then stop-and-copy", () => {
  for (const mode of modes) {
    it(`${mode.name}: destination equals source`, async () => {
      const vm = await setup(mode);
      try {
        vm.iteration = 0xfeedn;
        await Promise.all(vm.vcpuList.map((v) => v.startLoop({ rate: 1_000_000 })));
        const ends = vm.vcpuList.map((v) => v.loopEnd);
        // the guest is busy before migration starts
        const stores = () => vm.vcpuList.reduce((a, v) => a + v.workloadStores, 0n);
        while (stores() < 20_000n) await new Promise((r) => setTimeout(r, 5));
        const before = stores();
        // the guest stores a new value after every round, so a page missed once differs
        const r = await migrate(vm, { threshold: 32, maxRounds: 12, onRound: () => (vm.iteration += 1n) });
        const writes = stores() - before;
        console.log(
          `${mode.name}: ${r.rounds.length} pre-copy rounds [${r.rounds.map((x) => x.pages).join(", ")}], ` +
            `${r.pagesSent} pages sent, final round ${r.finalRoundPages} pages, downtime ${r.downtimeMs.toFixed(1)} ms, ` +
            `${writes} guest writes`,
        );
        expect(writes).toBeGreaterThan(1_000n); // the guest really wrote during migration
        expect(r.rounds.length).toBeGreaterThan(1);
        const h = r.hashes.get(0);
        expect(h?.source).toBe(h?.destination);
        expect(r.equal).toBe(true);
        // and byte for byte
        expect(Buffer.compare(vm.guestMemory(0) as Uint8Array, r.destination.get(0) as Uint8Array)).toBe(0);
        await vm.close();
        // the loops ended because close() stopped them (KVM_EXIT_INTR)
        expect(await Promise.all(ends)).toEqual(ends.map(() => KVM_EXIT_INTR));
      } finally {
        vm.dispose();
      }
    });
  }

  for (const mode of [modes[0], modes[2]]) {
    it(`${mode.name}: KVM's own writes are carried too (runstate areas rewritten around every KVM_RUN${mode.ring ? "" : ", cached writes between rounds"})`, async () => {
      const vm = await setup(mode);
      try {
        // a second slot that only KVM writes: each vCPU's runstate area across two of its pages
        const KVM_GPA = GPA + 0x1000_0000;
        vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: KVM_GPA, memorySize: 8 * 4096, backed: true });
        for (const [i, v] of vm.vcpuList.entries()) v.setXenRunstateArea(KVM_GPA + (2 * i + 1) * 4096 - 12);
        // VM context: on a ring VM without a bitmap the kernel drops these reports, so only here
        const ghc = mode.ring ? undefined : vm.createGfnToHvaCache(KVM_GPA + 5 * 4096 + 4000, 200);
        let round = 0;
        await Promise.all(vm.vcpuList.map((v) => v.startLoop({ rate: 1_000_000 })));
        const r = await migrate(vm, {
          threshold: 32,
          maxRounds: 8,
          onRound: () => {
            vm.iteration += 1n;
            ghc?.writeCached(new Uint8Array(200).fill(++round));
          },
        });
        const updates = vm.vcpuList.reduce((a, v) => a + v.xenRunstate.updates, 0);
        console.log(`${mode.name} + KVM writes: ${updates} runstate updates, ${round} cached writes, equal ${r.equal}, ring-full warnings ${vm.stats.ringFullWarnings}`);
        expect(updates).toBeGreaterThan(10);
        expect(vm.stats.ringFullWarnings).toBe(0); // no push into a hard-full ring (a lost report)
        expect(r.equal).toBe(true);
        expect(Buffer.compare(vm.guestMemory(1) as Uint8Array, r.destination.get(1) as Uint8Array)).toBe(0);
      } finally {
        await vm.close();
      }
    });
  }

  it("would catch a lost page: with remote TLB flushes never delivered the copies differ", async () => {
    const vm = await setup({ name: "dirty-log (fault injection)" });
    try {
      vm.setDebug({ skipTlbFlush: true });
      // 128 hot pages stay in the vCPUs' TLBs: after the first GET they are written through
      // stale writable translations and never reported again
      for (const v of vm.vcpuList) v.setWorkload({ pattern: "uniform", gpa: GPA, pages: 128, batch: 512 });
      vm.iteration = 1n;
      // unpaced: a paced loop may sleep through the few microseconds between the last
      // round's new value and the pause, and then nothing differs to be caught
      await Promise.all(vm.vcpuList.map((v) => v.startLoop()));
      while (vm.vcpuList.reduce((a, v) => a + v.workloadStores, 0n) < 20_000n) await new Promise((r) => setTimeout(r, 5));
      // after each round the guest stores a new value, and (even on a loaded machine) really
      // writes it before the next round: a page missed by a stale TLB entry then differs
      const stores = () => vm.vcpuList.reduce((a, v) => a + v.workloadStores, 0n);
      const onRound = () => {
        vm.iteration += 1n;
        const target = stores() + 2048n;
        for (const end = performance.now() + 2000; stores() < target && performance.now() < end; );
      };
      const r = await migrate(vm, { threshold: 0, maxRounds: 6, onRound });
      expect(r.equal).toBe(false);
      await vm.close();
    } finally {
      vm.dispose();
    }
  });

  it("the hash tells different memories apart", () => {
    const a = new Uint8Array(8192);
    const b = new Uint8Array(8192);
    expect(hashMemory(a)).toBe(hashMemory(b));
    b[4097] = 1;
    expect(hashMemory(a)).not.toBe(hashMemory(b));
  });
});

// Over a modelled link (QEMU's pre-copy: wire time = bytes / bandwidth, the guest running
// meanwhile): a small guest dirtying faster than the link cannot converge within the round
// limit on its own (converged false, but the final copy still makes the destination
// equal), and converges once dirty-limit caps its vCPUs.
describe("migrate() over a modelled link", () => {
  const LINK_PAGES = 4096; // 16 MiB backed
  async function linkGuest(): Promise<Vm> {
    const vm = await createVm({ maxMemoryBytes: 128 << 20, mmuPoolBytes: 4 << 20 });
    vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [256 * 16]);
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: GPA, memorySize: LINK_PAGES * 4096, backed: true });
    for (const [i, r] of splitRegion(GPA, LINK_PAGES, 2).entries()) {
      vm.createVcpu(i).setWorkload({ pattern: "sequential", ...r, batch: 64 });
    }
    vm.iteration = 1n;
    // 2 × 20k pages/s = 156 MB/s of dirtying against a 40 MB/s link
    await Promise.all(vm.vcpuList.map((v) => v.startLoop({ rate: 20_000 })));
    return vm;
  }
  const link = { bandwidthBytesPerSec: 40 * 2 ** 20, downtimeLimitMs: 300, maxRounds: 8 };

  it("without help the migration does not converge; with dirty-limit it does", async () => {
    const results = [];
    for (const convergence of ["none", "dirty-limit"] as const) {
      const vm = await linkGuest();
      try {
        const r = await migrate(vm, {
          ...link,
          convergence,
          ...(convergence === "dirty-limit" ? { dirtyLimitMBps: 1, dirtyLimitPeriodMs: 250 } : {}),
          onRound: () => (vm.iteration += 1n),
        });
        console.log(
          `${convergence}: converged ${r.converged}, rounds [${r.rounds.map((x) => x.pages).join(", ")}], final ${r.finalRoundPages} pages, ` +
            `downtime ${r.downtimeMs.toFixed(1)} ms, total ${r.totalMs?.toFixed(0)} ms, equal ${r.equal}`,
        );
        expect(r.equal).toBe(true);
        expect(Buffer.compare(vm.guestMemory(0) as Uint8Array, r.destination.get(0) as Uint8Array)).toBe(0);
        for (const x of r.rounds) expect(x.wireMs).toBeCloseTo((x.pages * 4096 * 1000) / link.bandwidthBytesPerSec, 6);
        results.push(r);
      } finally {
        await vm.close();
        vm.dispose();
      }
    }
    const [none, limited] = results;
    expect(none.converged).toBe(false);
    expect(none.rounds.length).toBe(link.maxRounds + 1);
    expect(none.downtimeMs).toBeGreaterThan(link.downtimeLimitMs);
    expect(limited.converged).toBe(true);
    expect(limited.convergence?.startedAtRound).not.toBeNull();
    expect(limited.downtimeMs).toBeLessThanOrEqual(link.downtimeLimitMs + 50);
  }, 60_000);

  it("rejects options that do not fit together", async () => {
    const vm = await createVm({ maxMemoryBytes: 128 << 20, mmuPoolBytes: 4 << 20 });
    try {
      await expect(migrate(vm, { downtimeLimitMs: 10 })).rejects.toThrow(/needs bandwidthBytesPerSec/);
      await expect(migrate(vm, { bandwidthBytesPerSec: 1e6, convergence: "dirty-limit" })).rejects.toThrow(/dirty ring/);
      await expect(migrate(vm, { bandwidthBytesPerSec: 0 })).rejects.toThrow(/bandwidthBytesPerSec/);
      await expect(migrate(vm, { bandwidthBytesPerSec: 1e6, threshold: 3 })).rejects.toThrow(/threshold/);
    } finally {
      vm.dispose();
    }
  });
});
