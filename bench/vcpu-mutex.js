#!/usr/bin/env node
// What keeping the promises costs (issue #7): a vCPU-context call now takes vcpu->mutex
// (a compare-and-swap and an exchange in the core) and validates its arguments; a VM's
// memory is scrubbed and pooled at dispose; stopping a loop is a request the vCPU honours.
// tinybench, one run, medians (lower is better):
//   - vcpu.writeGuest() to a writable page (TLB hit), per call; next to it the core's own
//     share (raw kvm_vcpu_write with the host's tag) and a KVM_RUN store for scale;
//   - createVm + 1 MiB logged slot + vCPU + one store + dispose (memories come from the pool);
//   - pause() of a running loop until it is parked, and resume().
// Writes bench/results/vcpu-mutex.{json,md} only with --save.
import { Bench, hrtimeNowTimestampProvider } from "tinybench";
import {
  PAGE,
  buildIdentity,
  fmt,
  hostEnvironment,
  mdTable,
  printEnvironment,
  requireBuild,
  startClock,
  textTable,
  tinybenchTiming,
  writeResults,
} from "./common.js";

requireBuild();
const { KVM_MEM_LOG_DIRTY_PAGES, createVm } = await import("../dist/index.js");
const { memoryPoolStats } = await import("../dist/vm.js");
const { log } = startClock("vcpu-mutex");
const save = process.argv.includes("--save");
const env = { ...hostEnvironment(), ...tinybenchTiming(), ...buildIdentity() };
printEnvironment(env, (v) => (typeof v === "object" ? JSON.stringify(v) : v));

const CALLS = 4096; // per sample
const vm = await createVm({ maxMemoryBytes: 256 << 20 });
vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 1024 * PAGE, backed: true });
const vcpu = vm.createVcpu(0);
vcpu.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: CALLS });
for (let p = 0; p < 1024; p++) vcpu.writeGuest(p * PAGE, 1); // every page writable, in the TLB
const raw = vm.raw;
let sink = 0;

const bench = new Bench({ time: 1000, warmupTime: 200, timestampProvider: hrtimeNowTimestampProvider, throws: true });
bench.add(`vcpu.writeGuest × ${CALLS}`, () => {
  for (let i = 0; i < CALLS; i++) sink |= vcpu.writeGuest((i & 1023) * PAGE, i);
});
bench.add(`raw kvm_vcpu_write × ${CALLS}`, () => {
  for (let i = 0; i < CALLS; i++) sink |= raw.kvm_vcpu_write(vm.addr, vcpu.addr, 1, BigInt((i & 1023) * PAGE), 1n);
});
bench.add(`KVM_RUN of ${CALLS} stores`, () => {
  sink |= vcpu.runSync();
});
bench.add("createVm + slot + vCPU + store + dispose", async () => {
  const v = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
  v.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 1 << 20, backed: true });
  sink |= v.createVcpu(0).writeGuest(0, 1);
  v.dispose();
});
// the loop runs only while its own task does (it would compete with the others for the cores)
let loopVm;
let looper;
bench.add(
  "pause() of a running loop (until parked)",
  async () => {
    await looper.pause();
  },
  {
    async beforeAll() {
      loopVm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
      loopVm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 1 << 20 });
      looper = loopVm.createVcpu(0);
      looper.setWorkload({ pattern: "uniform", gpa: 0, pages: 256, batch: 256 });
      await looper.startLoop();
    },
    afterEach() {
      looper.resume();
    },
    async afterAll() {
      await loopVm.close();
    },
  },
);

log(`running ${bench.tasks.length} tasks, 1 s each`);
await bench.run();
await vm.close();

const perCall = { [`vcpu.writeGuest × ${CALLS}`]: CALLS, [`raw kvm_vcpu_write × ${CALLS}`]: CALLS, [`KVM_RUN of ${CALLS} stores`]: CALLS };
const rows = bench.tasks.map((t) => {
  const r = t.result;
  const n = perCall[t.name] ?? 1;
  return {
    task: t.name,
    samples: r.latency.samplesCount,
    p50: (r.latency.p50 * 1e6) / n, // ns per call (or per cycle)
    p99: (r.latency.p99 * 1e6) / n,
    unit: n > 1 ? "ns per call" : "ns",
  };
});
const header = ["task (lower is better)", "median", "p99", "unit", "samples"];
const table = rows.map((r) => [r.task, fmt(r.p50, 1), fmt(r.p99, 1), r.unit, String(r.samples)]);
console.log(textTable(header, table));
const pool = memoryPoolStats();
console.log(`memory pool: ${pool.created} memories created, ${pool.reused} reused, ${pool.idle} idle (sink ${sink & 1})`);
if (save) {
  const md = [
    "# What keeping the promises costs (bench/vcpu-mutex.js)",
    "",
    `Machine: ${env.cpu}, ${env.cores} cores; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}; commit ${env.gitHead}.`,
    "Medians of one tinybench run (1 s per task); lower is better.",
    "",
    mdTable(header, table),
    "",
    `Memory pool after the run: ${pool.created} memories created, ${pool.reused} reused.`,
    "",
  ];
  for (const p of writeResults("vcpu-mutex", { env, rows, pool }, md)) log(`wrote ${p}`);
}
