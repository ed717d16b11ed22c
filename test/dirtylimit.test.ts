// Dirty-limit (QEMU's system/dirtylimit.c) and auto-converge on real vCPU worker threads:
// two vCPUs write sequentially (every store dirties a new page) at a fixed rate into
// 256-entry rings, so ring-full exits come every few ms; a host reaper harvests a ring as
// soon as its vCPU exits full (QEMU's vCPU thread reaps its own ring then) and every second
// (QEMU's reaper thread). vCPU 0 is limited to a quarter of its rate with a 250 ms period:
// once settled, its dirty rate (ring pushes per second, median over 500 ms windows) is held
// within ±10 % of the cap, while vCPU 1 keeps ≥ 90 % of the store rate it has without any
// limit, measured in the same process. The same run with the controller's steps never
// applied (dryRun) is not held: the check can fail. Auto-converge at 50 % slows both.
// Imports the built package: vCPU workers are dist/vcpu-worker.js.
import { describe, expect, it } from "vitest";
import {
  type Vcpu,
  type Vm,
  createVm,
  harvestDirtyRings,
  setCpuThrottle,
  splitRegion,
  startDirtyLimit,
} from "../dist/index.js";
import { logMode } from "../dist/log_mode.js";

const RATE = 50_000; // stores/s per vCPU
const CAP = RATE / 4; // pages/s for vCPU 0
const RING = 256;
const PAGES = 16384;
const GPA = 0x1_0000_0000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Guest {
  vm: Vm;
  vcpus: Vcpu[];
  stop(): Promise<void>;
}

async function guest(): Promise<Guest> {
  const mode = logMode({ kind: "dirty-ring", ringEntries: RING });
  const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 << 20, ...mode.vmOptions });
  mode.createVmDone(vm);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: mode.slotFlags,
    guestPhysAddr: GPA,
    memorySize: PAGES * 4096,
    backed: true,
  });
  const vcpus = splitRegion(GPA, PAGES, 2).map((r, i) => {
    const v = vm.createVcpu(i);
    v.setWorkload({ pattern: "sequential", gpa: r.gpa, pages: r.pages, batch: 64, seed: BigInt(i + 1) });
    return v;
  });
  // the reaper: at each ring-full exit, and every second
  let exits = 0;
  let last = performance.now();
  const reaper = setInterval(() => {
    const f = vcpus.reduce((a, v) => a + Number(v.stats.ringFullExits), 0);
    const now = performance.now();
    if (f !== exits || now - last >= 1000) {
      exits = f;
      last = now;
      harvestDirtyRings(vm, { kick: false });
    }
  }, 1);
  for (const v of vcpus) await v.startLoop({ rate: RATE });
  return {
    vm,
    vcpus,
    async stop() {
      clearInterval(reaper);
      for (const v of vcpus) await v.pause();
      vm.dispose();
    },
  };
}

/** Per vCPU, per window of `ms`: dirty pages/s (ring pushes) and stores/s. */
async function windows(vcpus: Vcpu[], n: number, ms: number) {
  const out = vcpus.map(() => ({ dirty: [] as number[], stores: [] as number[] }));
  const read = () => vcpus.map((v) => ({ p: Number(v.stats.ringPushes), s: Number(v.stats.stores) }));
  let last = read();
  let t = performance.now();
  for (let k = 0; k < n; k++) {
    await sleep(ms);
    const now = performance.now();
    const cur = read();
    const s = (now - t) / 1000;
    for (const [i, o] of out.entries()) {
      o.dirty.push((cur[i].p - last[i].p) / s);
      o.stores.push((cur[i].s - last[i].s) / s);
    }
    last = cur;
    t = now;
  }
  return out;
}

const fmt = (a: number[]) => a.map((x) => Math.round(x)).join(" ");

describe("dirty-limit and auto-converge (2 vCPU workers, 256-entry rings)", () => {
  let free: { dirty: number[]; stores: number[] }[];

  it("without any limit, both vCPUs run at their rate", async () => {
    const g = await guest();
    try {
      await sleep(300);
      free = await windows(g.vcpus, 6, 500);
    } finally {
      await g.stop();
    }
    console.log(`free: vCPU0 ${fmt(free[0].stores)} stores/s; vCPU1 ${fmt(free[1].stores)}`);
    for (const v of free) expect(median(v.stores)).toBeGreaterThan(RATE * 0.5);
  }, 20_000);

  it("holds the limited vCPU within ±10 % of its cap; the other keeps ≥ 90 % of its rate", async () => {
    const g = await guest();
    try {
      await sleep(300);
      const dl = startDirtyLimit(g.vm, { quotaPagesPerSec: { 0: CAP }, periodMs: 250 });
      await sleep(1000); // settle: 4 periods
      const w = await windows(g.vcpus, 8, 500);
      const st = dl.state();
      dl.stop();
      const held = median(w[0].dirty);
      const ratio = median(w[1].stores) / median(free[1].stores);
      console.log(
        `limited vCPU0 (cap ${CAP} pages/s = ${(CAP / 256).toFixed(1)} MB/s): ${fmt(w[0].dirty)} pages/s, median ` +
          `${Math.round(held)} (${(((held - CAP) / CAP) * 100).toFixed(1)} %); throttle µs per full by period ` +
          `${st.vcpus[0].history.map((h) => h.throttleUs).join(" ")}; vCPU1 ${fmt(w[1].stores)} stores/s, ` +
          `${(ratio * 100).toFixed(1)} % of its free rate`,
      );
      expect(Math.abs(held - CAP) / CAP).toBeLessThanOrEqual(0.1);
      expect(ratio).toBeGreaterThanOrEqual(0.9);
      expect(st.vcpus[0].throttleUsPerFull).toBeGreaterThan(0);
      expect(Number(g.vcpus[0].stats.throttleNs)).toBeGreaterThan(0);
      expect(Number(g.vcpus[1].stats.throttleNs)).toBe(0);
    } finally {
      await g.stop();
    }
  }, 20_000);

  it("the check can fail: with the controller's steps never applied, the vCPU is not held", async () => {
    const g = await guest();
    try {
      await sleep(300);
      const dl = startDirtyLimit(g.vm, { quotaPagesPerSec: { 0: CAP }, periodMs: 250, dryRun: true });
      await sleep(1000);
      const w = await windows(g.vcpus, 4, 500);
      dl.stop();
      console.log(`dry run: vCPU0 ${fmt(w[0].dirty)} pages/s`);
      expect(Math.abs(median(w[0].dirty) - CAP) / CAP).toBeGreaterThan(0.1);
    } finally {
      await g.stop();
    }
  }, 20_000);

  it("auto-converge (cpu-throttle 50 %) slows every vCPU", async () => {
    const g = await guest();
    try {
      await sleep(300);
      for (const v of g.vcpus) setCpuThrottle(v, 50);
      await sleep(200);
      const w = await windows(g.vcpus, 4, 500);
      const ratios = w.map((v, i) => median(v.stores) / median(free[i].stores));
      console.log(`auto-converge 50 %: ${ratios.map((r) => `${(r * 100).toFixed(1)} %`).join(", ")} of the free rates`);
      for (const r of ratios) expect(r).toBeLessThan(0.7);
      for (const v of g.vcpus) expect(Number(v.stats.throttleNs)).toBeGreaterThan(0);
    } finally {
      await g.stop();
    }
  }, 20_000);

  it("rejects bad options", async () => {
    const g = await guest();
    try {
      expect(() => startDirtyLimit(g.vm, {})).toThrow(/quota/);
      expect(() => startDirtyLimit(g.vm, { quotaPagesPerSec: { 5: 100 } })).toThrow(/does not exist/);
      expect(() => startDirtyLimit(g.vm, { quotaMBps: { 0: -1 } })).toThrow(/positive/);
      expect(() => startDirtyLimit(g.vm, { quotaMBps: { 0: 1 }, periodMs: 1 })).toThrow(/periodMs/);
      expect(() => setCpuThrottle(g.vcpus[0], 100)).toThrow(/pct/);
    } finally {
      await g.stop();
    }
  });
});
