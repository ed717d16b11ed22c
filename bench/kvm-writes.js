#!/usr/bin/env node
// What a KVM-originated write costs (issue #11), per 8-byte write, against the guest's own
// store: the microbenchmark harness (common.js runGroup: tinybench, interleaved rounds),
// medians, lower is better. Every write lands in a logged, backed slot of a bitmap VM whose
// pages are already dirty (the mark is a bitmap test), so the rows differ only in the path:
//   - a guest store inside KVM_RUN (writable page, TLB hit) and one vcpu.writeGuest call;
//   - kvm_write_guest (uncached: a memslot lookup per write), the host API and the raw core;
//   - gfn_to_hva_cache write (kvm_write_guest_offset_cached), host API and raw core;
//   - gfn_to_pfn_cache write with the usage protocol (lock, check, copy, mark, unlock);
//   - one Xen runstate update (0x30 bytes across a page boundary: two caches, the
//     XEN_RUNSTATE_UPDATE protocol, two pages marked).
//
//   npm run build && node bench/kvm-writes.js [--quick] [--save]
import {
  PAGE,
  buildIdentity,
  commandLine,
  fmt,
  hostEnvironment,
  mdTable,
  printEnvironment,
  requireBuild,
  runGroup,
  startClock,
  textTable,
  tinybenchTiming,
  writeResults,
} from "./common.js";

const cli = commandLine("node bench/kvm-writes.js [--quick] [--save]");
requireBuild();
const { KVM_MEM_LOG_DIRTY_PAGES, createVm } = await import("../dist/index.js");
const { log } = startClock("kvm-writes");
const env = { ...hostEnvironment(), ...tinybenchTiming(), ...buildIdentity() };
printEnvironment(env, (v) => (typeof v === "object" ? JSON.stringify(v) : v));

const N = 4096; // writes per sample
const GPA = 0x1_0000_0000;
const vm = await createVm({ maxMemoryBytes: 256 << 20 });
vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: GPA, memorySize: 1024 * PAGE, backed: true });
const vcpu = vm.createVcpu(0);
vcpu.setWorkload({ pattern: "uniform", gpa: GPA, pages: 1024, batch: N });
for (let p = 0; p < 1024; p++) vcpu.writeGuest(GPA + p * PAGE, 1); // writable, in the TLB, dirty
const raw = vm.raw;
const ghc = vm.createGfnToHvaCache(GPA + 7 * PAGE + 64, 8);
const gpc = vm.createGfnToPfnCache();
gpc.activate(GPA + 9 * PAGE + 64, 8);
vcpu.setXenRunstateArea(GPA + 12 * PAGE - 20);
const word = new Uint8Array(8).fill(3);
const scratch = vm.hostScratch(8);
new Uint8Array(vm.memory.buffer, scratch, 8).set(word);
let sink = 0;
let now = 1n;

const tasks = [
  { id: "guest-store", label: `guest store in KVM_RUN × ${N}`, fn: () => (sink |= vcpu.runSync()) },
  { id: "writeGuest", label: `vcpu.writeGuest × ${N}`, fn: () => { for (let i = 0; i < N; i++) sink |= vcpu.writeGuest(GPA + (i & 1023) * PAGE, i); } },
  { id: "kvm_write_guest", label: `vm.kvmWriteGuest × ${N}`, fn: () => { for (let i = 0; i < N; i++) vm.kvmWriteGuest(GPA + (i & 1023) * PAGE, i); } },
  { id: "kvm_write_guest-raw", label: `raw kvm_write_guest × ${N}`, fn: () => { for (let i = 0; i < N; i++) sink |= raw.kvm_write_guest(vm.addr, 0, 1, BigInt(GPA + (i & 1023) * PAGE), 5n, 1); } },
  { id: "ghc", label: `GfnToHvaCache.writeCached × ${N}`, fn: () => { for (let i = 0; i < N; i++) ghc.writeCached(word); } },
  { id: "ghc-raw", label: `raw kvm_write_guest_offset_cached × ${N}`, fn: () => { for (let i = 0; i < N; i++) sink |= raw.kvm_write_guest_offset_cached(vm.addr, 0, 1, ghc.addr, scratch, 0, 8, 1); } },
  { id: "gpc", label: `GfnToPfnCache.write × ${N}`, fn: () => { for (let i = 0; i < N; i++) gpc.write(word); } },
  { id: "gpc-raw", label: `raw kvm_gpc_access (write) × ${N}`, fn: () => { for (let i = 0; i < N; i++) sink |= raw.kvm_gpc_access(gpc.addr, 0, 1, scratch, 0, 8, 1, 0, 1); } },
  { id: "runstate", label: `vcpu.updateXenRunstate (split area) × ${N}`, fn: () => { for (let i = 0; i < N; i++) vcpu.updateXenRunstate(i & 1, { now: now++ }); } },
].map((t) => ({ ...t, ops: N }));
const rounds = cli.quick ? 2 : 3;
log(`running ${tasks.length} tasks in ${rounds} interleaved rounds`);
const results = await runGroup("kvm-writes", { time: cli.quick ? 150 : 600, iterations: 32, rounds, log }, tasks);
const log0 = vm.getDirtyLog(0);
const checks = {
  dirty: [7, 9, 11, 12].every((p) => (log0[p >> 3] >> (p & 7)) & 1),
  runstateUpdates: vcpu.xenRunstate.updates,
};
await vm.close();
if (!checks.dirty) throw new Error("the cached and runstate writes did not all mark their pages");

const floor = results.find((r) => r.id === "guest-store").nsPerOpP50;
const rows = results.map((r) => ({ task: r.task, p50: r.nsPerOpP50, p99: r.nsPerOpP99, overStore: r.nsPerOpP50 / floor, samples: r.samples }));
const header = ["write (lower is better)", "ns median", "ns p99", "× guest store", "samples"];
const table = rows.map((r) => [r.task, fmt(r.p50, 1), fmt(r.p99, 1), `${r.overStore.toFixed(1)}×`, String(r.samples)]);
console.log(textTable(header, table));
console.log(`(every sample's pages checked dirty afterwards; ${checks.runstateUpdates} runstate copies written; sink ${sink & 1})`);
const md = [
  "# What a KVM-originated write costs (bench/kvm-writes.js)",
  "",
  `Machine: ${env.cpu}, ${env.cores} cores; Node ${process.version}; ${new Date().toISOString().slice(0, 10)}; commit ${env.gitHead}.`,
  `Per 8-byte write into a logged, backed, already-dirty page; medians over ${rounds} interleaved tinybench rounds (common.js runGroup); lower is better. "raw" rows call the core's export directly from JavaScript (one call per write); the others go through the host API (argument checks, a copy into the VM's scratch). Generated by \`node bench/kvm-writes.js --save\`.`,
  "",
  mdTable(header, table),
  "",
];
for (const p of writeResults(cli.save, "kvm-writes", { env, rows, checks }, md)) log(`wrote ${p}`);
