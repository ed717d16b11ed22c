// vCPU threads: guest store rate, first-write (fault) rate, a worker vCPU against a
// concurrent collector, and the cost of the TLB model. One process, so every ratio printed
// is a same-run ratio. Higher rates are better.
//
//   npm run build && node bench/threads.js [--quick] [--save] [--scale k]   (k multiplies sample counts and windows)
//
// Cases (tlb: true and tlb: false VMs are measured in the same rounds):
//   1  stores to pages that are already writable in a dirty-logged slot (no faults):
//      (a) vcpu.runSync() of a batch on the main thread, (b) await vcpu.run() of a batch on
//      the vCPU's worker; a 512-page uniform hot set (fits the 2048-entry TLB) and a
//      16384-page region, uniform and sequential. Diagnostic rows: the 16384-page cases on
//      an unbacked slot (same tracking, no guest memory to store to).
//   2  first write to a write-protected page (fast fault + report), bitmap and 65536-entry
//      ring: runSync() of a sequential workload with batch = pages (16384, under the ring's
//      soft limit), TLB model on and off. The pages are written once and re-armed by a
//      harvest outside the timed region, and that harvest checks what the run reported.
//      (bench/micro.js compares the same first writes on unbacked slots, with the floor.)
//   3  a vCPU loop on its worker (uniform over 4096 pages) alone vs. while the main thread
//      harvests every 5 ms (bitmap: GET; ring: kick, collect, reset); windows of the two
//      kinds alternate, and the rate is stores retired (vcpu.workloadStores) / wall
// VMs are set up and every harvest is made through the LogMode table (dist/log_mode.js,
// via common.js trackedVm): this script has no harvest sequence of its own.
//   4  cases 1 and 2 with tlb: true vs tlb: false, as ratios
// Timing: process.hrtime.bigint() around each runSync() / await run(); performance.now()
// for case 3's windows. Cases rotate inside each round so that drift in the machine's load
// hits every case alike; the first run after a switch is a discarded warm-up. On-CPU time
// (to show preemption on a shared machine): the main thread's from process.cpuUsage(), a
// worker's from /proc/self/task/<tid>/schedstat (updated at scheduler ticks, so it is
// summed over a case's samples, not read per sample); other processes' CPU per phase from
// /proc/stat. Every run's result is checked outside the timed region.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import {
  buildIdentity,
  commandLine,
  fmt,
  GPA,
  hostEnvironment,
  loadAverage,
  MIB,
  median,
  mdTable,
  PAGE,
  printEnvironment,
  requireBuild,
  startClock,
  summarize,
  targetLines,
  targetsMd,
  textTable,
  timerResolutionNs,
  trackedVm,
  writeResults,
} from "./common.js";

const cli = commandLine(
  "node bench/threads.js [--quick] [--save] [--scale k (default 1): multiply sample counts and window lengths]",
);
const SCALE = cli.option("--scale", cli.quick ? 0.25 : 1);
requireBuild();
const { KVM_EXIT_IO } = await import("../dist/index.js");

const HOT = 512; // pages: fits the core's 2048-entry direct-mapped TLB
const LARGE = 16384; // pages (64 MiB): 8× the TLB
const FAULT_PAGES = 16384; // first writes per case-2 sample (the ring's soft limit is 65472)
const LOOP_PAGES = 4096; // case 3's hot set
const RING = 65536; // entries
const ROUNDS = cli.quick ? 3 : 9;
const STORE_SAMPLE_MS = 4; // case 1a: one runSync() ≈ 4 ms
const STORE_SAMPLES = Math.max(3, Math.round(12 * SCALE)); // per case per round
const WORKER_SAMPLE_MS = 40; // case 1b: one await run() ≈ 40 ms
const WORKER_SAMPLES = Math.max(1, Math.round(3 * SCALE));
const FAULT_SAMPLES = Math.max(4, Math.round(20 * SCALE));
const ROUNDS_3 = cli.quick ? 3 : 11;
const WINDOW_MS = Math.round(250 * SCALE); // case 3
const HARVEST_EVERY_MS = 5;
const LOOP_BATCH = 16384; // stores per KVM_RUN in the case-3 loop
const TARGETS = { storesMps: 150, faultMps: 20, collectorShare: 0.7 };

const { log, seconds } = startClock("threads");

// ---------------------------------------------------------------- environment
const SCHEDSTAT = existsSync(`/proc/self/task/${process.pid}/schedstat`);
const env = {
  ...hostEnvironment(),
  timer: "process.hrtime.bigint (runs), performance.now (windows)",
  timerResolutionNs: timerResolutionNs(),
  threadCpuTime: SCHEDSTAT ? "/proc/self/task/<tid>/schedstat" : "unavailable",
  ...buildIdentity(),
  loadAverageAtStart: loadAverage(),
  scale: SCALE,
};
printEnvironment(env);
// ---------------------------------------------------------------- helpers
const sleeper = new Int32Array(new SharedArrayBuffer(4));
/** Block this thread for ms (Atomics.wait on a private word: no event loop, no spinning). */
function sleepMs(ms) {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}
/** ns this thread (tid) has been on a CPU, and waiting on a run queue. */
function threadTime(tid) {
  if (!SCHEDSTAT) return { run: 0, wait: 0 };
  const [run, wait] = readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ").map(Number);
  return { run, wait };
}
function allThreadTimes() {
  const m = new Map();
  if (!SCHEDSTAT) return m;
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      m.set(Number(tid), threadTime(tid));
    } catch {
      // the thread ended meanwhile
    }
  }
  return m;
}
/** The thread (not this one) that ran most between two allThreadTimes() snapshots. */
function busiestOtherThread(before, after) {
  let best = 0;
  let most = -1;
  for (const [tid, t] of after) {
    if (tid === process.pid) continue;
    const d = t.run - (before.get(tid)?.run ?? 0);
    if (d > most) {
      most = d;
      best = tid;
    }
  }
  return best;
}
/**
 * CPU used by other processes during a phase, in cores: all busy time in /proc/stat minus
 * this process's CPU time (process.cpuUsage). A snapshot now; `.end()` gives the figure.
 */
function otherLoad() {
  const stat = () => {
    try {
      const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
      return { busy: f[0] + f[1] + f[2] + f[5] + f[6] + f[7], steal: f[7] }; // USER_HZ ticks
    } catch {
      return null;
    }
  };
  const s0 = stat();
  const c0 = process.cpuUsage();
  const f0 = process.resourceUsage().minorPageFault;
  const t0 = performance.now();
  return {
    end() {
      const s1 = stat();
      if (!s0 || !s1) return null;
      const c = process.cpuUsage(c0);
      const wallS = (performance.now() - t0) / 1000;
      const busyS = (s1.busy - s0.busy) / 100;
      const ours = (c.user + c.system) / 1e6;
      return {
        otherCores: Number(Math.max(0, (busyS - ours) / wallS).toFixed(2)),
        oursCores: Number((ours / wallS).toFixed(2)),
        stealPct: Number((((s1.steal - s0.steal) / 100 / (wallS * env.cores)) * 100).toFixed(1)),
        // page faults of this process (a slow phase with few faults is not the guest kernel's doing)
        minorFaults: process.resourceUsage().minorPageFault - f0,
      };
    },
  };
}
const faults = (vcpu) => {
  const s = vcpu.stats;
  return Number(s.fastFaults + s.slowFaults);
};
function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

// Other processes' CPU right now (the load average also counts this machine's recent past)
{
  const probe = otherLoad();
  sleepMs(300);
  env.otherCoresAtStart = probe.end()?.otherCores ?? null;
  console.log(`  ${"otherCoresAtStart".padEnd(20)} ${env.otherCoresAtStart}`);
  if (env.otherCoresAtStart > 0.3 || env.loadAverageAtStart[0] > env.cores) {
    console.log(
      `note: the machine is busy (other processes use ${env.otherCoresAtStart} of ${env.cores} cores, load average` +
        ` ${env.loadAverageAtStart[0]}): rates per wall second are depressed and p99 inflated; see the on-CPU columns` +
        " and the other-load figures",
    );
  }
}

/** A VM with one tracked slot of `pages` pages at GPA (bitmap or a 65536-entry ring) and `vcpus` vCPUs. */
const loggedVm = ({ tlb, pages, ring = false, backed = true, vcpus = 1 }) =>
  trackedVm({
    mode: ring ? `ring:${RING}` : "bitmap",
    pages,
    backed,
    tlb,
    vcpus,
    maxMemoryBytes: 512 * MIB,
    mmuPoolBytes: 4 * MIB,
  });
/**
 * Harvest x through its LogMode and check the report: exactly pages 0..n-1, each once, in
 * order (a bitmap reports in page order; the ring in write order, here sequential).
 */
function harvestAll(x, n, what) {
  let next = 0;
  const c = x.mode.collectDirtyPages(x.vm, [0], (slot, offset) => {
    if (slot !== 0 || offset !== next) throw new Error(`${what}: report ${next} is (${slot}, ${offset})`);
    next++;
  });
  check(c.reported === n && next === n, `${what}: ${c.reported} pages reported, ${n} expected`);
}
const tlbName = (tlb) => (tlb ? "tlb on" : "tlb off");
const records = []; // every correctness check that ran, for the JSON
const loads = {}; // other processes' CPU per phase

/**
 * One timed sample: fn() runs the vCPU (sync or async) and returns its exit; the thread
 * whose on-CPU time is charged is tid. Returns ns.
 */
async function sample(c, tid, fn) {
  const cpu0 = threadTime(tid);
  const t0 = process.hrtime.bigint();
  const r = await fn();
  const t1 = process.hrtime.bigint();
  const cpu1 = threadTime(tid);
  check(r === KVM_EXIT_IO, `${c.label}: exit ${r}`);
  const ns = Number(t1 - t0);
  c.cpuRun += cpu1.run - cpu0.run;
  c.cpuWait += cpu1.wait - cpu0.wait;
  c.wall += ns;
  return ns;
}
/**
 * The same on the main thread, synchronously. Its on-CPU time comes from
 * process.cpuUsage() (getrusage brings the calling thread's runtime up to date, so it is
 * exact even for a sub-millisecond run; the idle worker threads add nothing).
 */
function syncSample(c, fn) {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const r = fn();
  const t1 = process.hrtime.bigint();
  const cpu = process.cpuUsage(cpu0);
  check(r === KVM_EXIT_IO, `${c.label}: exit ${r}`);
  const ns = Number(t1 - t0);
  c.cpuRun += (cpu.user + cpu.system) * 1000;
  c.wall += ns;
  return ns;
}
const newCase = (props) => ({ ...props, perOp: [], roundP50: [], cpuRun: 0, cpuWait: 0, wall: 0 });

// ---------------------------------------------------------------- case 1: stores to writable pages
log(`case 1 setup: 4 VMs (backed/unbacked × tlb on/off), one dirty-logged slot of ${LARGE} pages each`);
const storeVms = [];
for (const backed of [true, false]) {
  for (const tlb of [true, false]) {
    const x = await loggedVm({ tlb, pages: LARGE, backed, vcpus: backed ? 2 : 1 });
    const [main, worker] = x.vcpus;
    // first write of every page (slow faults: map + report), a harvest (check + re-arm),
    // then write every page again (fast faults): every SPTE is writable from here on
    const name = `case 1 ${backed ? "backed" : "unbacked"}, ${tlbName(tlb)}`;
    check(main.writeStrided(GPA, PAGE, LARGE, 1) === LARGE, `${name}: first writes`);
    harvestAll(x, LARGE, `${name}: harvest after first writes`);
    check(main.writeStrided(GPA, PAGE, LARGE, 2) === LARGE, `${name}: second writes`);
    storeVms.push({ name, backed, tlb, x, vm: x.vm, main, worker, faults0: faults(main) });
  }
}
const STORE_WORKLOADS = [
  { id: "hot512", label: `uniform, ${HOT}-page hot set (TLB-resident)`, pattern: "uniform", pages: HOT },
  { id: "uni16k", label: `uniform, ${LARGE} pages`, pattern: "uniform", pages: LARGE },
  { id: "seq16k", label: `sequential, ${LARGE} pages`, pattern: "sequential", pages: LARGE },
];
/** Batch that makes one runSync() last about ms, from trial runs. */
function calibrate(vcpu, w, ms) {
  vcpu.setWorkload({ pattern: w.pattern, gpa: GPA, pages: w.pages, batch: 1 << 16 });
  for (let k = 0; k < 8; k++) vcpu.runSync(); // lets the core tier up
  const t0 = process.hrtime.bigint();
  for (let k = 0; k < 4; k++) vcpu.runSync();
  const ns = Number(process.hrtime.bigint() - t0) / (4 << 16);
  return Math.max(4096, Math.min(1 << 27, Math.round((ms * 1e6) / ns)));
}
log("case 1: spawning the vCPU workers of the backed VMs");
for (const s of storeVms) {
  if (!s.worker) continue;
  const before = allThreadTimes();
  await s.worker.spawn();
  s.worker.setWorkload({ pattern: "uniform", gpa: GPA, pages: HOT, batch: 1 << 20 });
  for (let k = 0; k < 10; k++) check((await s.worker.run()) === KVM_EXIT_IO, "worker warm-up");
  s.workerTid = busiestOtherThread(before, allThreadTimes());
  s.workerFaults0 = faults(s.worker);
}
// the message round trip of an (almost) empty KVM_RUN on a worker, for reference
const rtt = [];
{
  const w = storeVms[0].worker;
  w.setWorkload({ pattern: "uniform", gpa: GPA, pages: HOT, batch: 1 });
  for (let k = 0; k < 5; k++) await w.run();
  for (let k = 0; k < 200; k++) {
    const t0 = process.hrtime.bigint();
    await w.run();
    rtt.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
}
const case1 = [];
for (const s of storeVms) {
  for (const w of STORE_WORKLOADS) {
    if (!s.backed && w.id === "hot512") continue;
    const batch = calibrate(s.main, w, STORE_SAMPLE_MS);
    const mem = s.backed ? "" : " [unbacked]";
    case1.push(
      newCase({
        ...w,
        kind: "main",
        s,
        tlb: s.tlb,
        backed: s.backed,
        id: `1a-${w.id}${s.backed ? "" : "-unbacked"}-${s.tlb ? "tlb" : "notlb"}`,
        label: `1a runSync, ${w.label}${mem}, ${tlbName(s.tlb)}`,
        batch,
      }),
    );
    if (s.worker) {
      case1.push(
        newCase({
          ...w,
          kind: "worker",
          s,
          tlb: s.tlb,
          backed: s.backed,
          id: `1b-${w.id}-${s.tlb ? "tlb" : "notlb"}`,
          label: `1b worker run(), ${w.label}, ${tlbName(s.tlb)}`,
          batch: Math.round((batch * WORKER_SAMPLE_MS) / STORE_SAMPLE_MS),
        }),
      );
    }
  }
}
log(
  `case 1: ${case1.length} cases × ${ROUNDS} rounds; runSync ${STORE_SAMPLES} × ~${STORE_SAMPLE_MS} ms,` +
    ` worker run() ${WORKER_SAMPLES} × ~${WORKER_SAMPLE_MS} ms per round`,
);
let load = otherLoad();
for (let round = 0; round < ROUNDS; round++) {
  for (let j = 0; j < case1.length; j++) {
    const c = case1[(j + round) % case1.length];
    const main = c.kind === "main";
    const vcpu = main ? c.s.main : c.s.worker;
    const tid = c.s.workerTid;
    const n = main ? STORE_SAMPLES : WORKER_SAMPLES;
    vcpu.setWorkload({ pattern: c.pattern, gpa: GPA, pages: c.pages, batch: c.batch });
    check((await vcpu.run()) === KVM_EXIT_IO, "warm-up run exit");
    const xs = [];
    for (let k = 0; k < n; k++) {
      const ns = main ? syncSample(c, () => vcpu.runSync()) : await sample(c, tid, () => vcpu.run());
      xs.push(ns / c.batch);
    }
    c.perOp.push(...xs);
    c.roundP50.push(median(xs));
    check(vcpu.workloadStores === BigInt(c.batch * (n + 1)), `${c.label}: stores retired`);
  }
}
loads.case1 = load.end();
for (const s of storeVms) {
  check(faults(s.main) === s.faults0, `${s.name}: no fault in the timed runSync() runs`);
  if (s.worker) check(faults(s.worker) === s.workerFaults0, `${s.name}: no fault in the timed worker runs`);
  // every page was written (twice) before the timed runs and never re-armed since the
  // setup harvest: the next harvest reports each page exactly once, whatever the timed runs did
  harvestAll(s.x, LARGE, `${s.name}: harvest after the timed runs`);
  records.push({
    check: `${s.name}: 0 faults during the timed runs (main${s.worker ? " and worker" : ""}); the harvest after them reports each of the ${LARGE} pages once`,
    ok: true,
  });
}

// ---------------------------------------------------------------- case 2: first writes
log(`case 2 setup: 4 VMs (bitmap/ring × tlb on/off), a backed dirty-logged slot of ${FAULT_PAGES} pages`);
const case2 = [];
{
  const backed = true;
  for (const mode of ["bitmap", "ring"]) {
    for (const tlb of [true, false]) {
      const x = await loggedVm({ tlb, pages: FAULT_PAGES, ring: mode === "ring", backed });
      const { vm } = x;
      const vcpu = x.vcpus[0];
      const c = newCase({
        id: `2-${mode}-${tlb ? "tlb" : "notlb"}`,
        label: `2 first write, ${mode}, ${tlbName(tlb)}`,
        mode,
        tlb,
        backed,
        vm,
        vcpu,
        checked: 0,
      });
      /** Re-arm, checking that exactly pages 0..FAULT_PAGES-1 were reported, in order. */
      c.reprotect = () => {
        harvestAll(x, FAULT_PAGES, c.label);
        c.checked++;
      };
      check(vcpu.writeStrided(GPA, PAGE, FAULT_PAGES, 1) === FAULT_PAGES, "first writes"); // slow faults: map
      c.reprotect();
      vcpu.setWorkload({ pattern: "sequential", gpa: GPA, pages: FAULT_PAGES, batch: FAULT_PAGES });
      for (let k = 0; k < 8; k++) {
        check(vcpu.runSync() === KVM_EXIT_IO, "warm-up");
        c.reprotect();
      }
      case2.push(c);
    }
  }
}
log(`case 2: ${case2.length} cases × ${ROUNDS} rounds × ${FAULT_SAMPLES} runSync() of ${FAULT_PAGES} first writes`);
load = otherLoad();
for (let round = 0; round < ROUNDS; round++) {
  for (let j = 0; j < case2.length; j++) {
    const c = case2[(j + round) % case2.length];
    const { vcpu } = c;
    check(vcpu.runSync() === KVM_EXIT_IO, "warm-up");
    c.reprotect();
    const xs = [];
    for (let k = 0; k < FAULT_SAMPLES; k++) {
      const f0 = vcpu.stats.fastFaults;
      const ns = syncSample(c, () => vcpu.runSync());
      check(vcpu.stats.fastFaults - f0 === BigInt(FAULT_PAGES), `${c.label}: one fast fault per page`);
      xs.push(ns / FAULT_PAGES);
      c.reprotect();
    }
    c.perOp.push(...xs);
    c.roundP50.push(median(xs));
  }
}
loads.case2 = load.end();
for (const c of case2) {
  const st = c.vcpu.stats;
  check(st.slowFaults === BigInt(FAULT_PAGES), `${c.label}: slow faults only on the first writes`);
  if (c.mode === "ring") {
    check(st.ringFullExits === 0n && c.vm.stats.ringFullWarnings === 0, `${c.label}: stayed under the soft limit`);
    check(st.ringPushes === st.fastFaults + st.slowFaults, `${c.label}: one push per fault`);
  }
  records.push({
    check: `${c.label.slice(2)}: ${c.checked} harvests, each reported exactly the ${FAULT_PAGES} pages first-written (ring: in write order); one fast fault per page`,
    ok: true,
  });
  c.vm.dispose();
}

// ---------------------------------------------------------------- case 3: worker loop vs. collector
log(`case 3 setup: 2 VMs (bitmap, ring; tlb on), a backed ${LOOP_PAGES}-page dirty-logged slot, vCPU loop on a worker`);
const case3 = [];
for (const mode of ["bitmap", "ring"]) {
  const x = await loggedVm({ tlb: true, pages: LOOP_PAGES, ring: mode === "ring" });
  const { vm } = x;
  const vcpu = x.vcpus[0];
  const c = {
    mode,
    vm,
    vcpu,
    label: `${x.mode.name} harvest (LogMode) every 5 ms`,
    alone: [],
    withCollector: [],
    pairRatios: [],
    harvestUs: [],
    pagesPerHarvest: [],
    intervalMs: [],
    harvestsPerS: [],
    workerCpuAlone: [],
    workerCpuWith: [],
    mainCpuWith: [],
    reported: 0,
    badOffsets: 0,
    slowHarvests: [], // > 1 ms: where in the window
  };
  const onOffset = (slot, offset) => {
    if (slot !== 0 || offset >= LOOP_PAGES) c.badOffsets++;
  };
  c.harvest = () => x.mode.collectDirtyPages(vm, [0], onOffset).reported;
  vcpu.setWorkload({ pattern: "uniform", gpa: GPA, pages: LOOP_PAGES, batch: LOOP_BATCH });
  const before = allThreadTimes();
  await vcpu.spawn();
  await vcpu.startLoop(); // resolves once the worker runs the vCPU
  c.ended = vcpu.loopEnd;
  const deadline = performance.now() + 5000;
  while (vcpu.workloadStores < 1_000_000n) {
    if (performance.now() > deadline) throw new Error(`case 3 ${mode}: the vCPU loop did not start`);
    sleepMs(1);
  }
  sleepMs(50);
  c.tid = busiestOtherThread(before, allThreadTimes());
  await vcpu.pause();
  c.reported += c.harvest();
  case3.push(c);
}
function aloneWindow(c) {
  const w0 = threadTime(c.tid);
  const s0 = Number(c.vcpu.workloadStores);
  const t0 = performance.now();
  sleepMs(WINDOW_MS);
  const s1 = Number(c.vcpu.workloadStores);
  const t1 = performance.now();
  const w1 = threadTime(c.tid);
  c.workerCpuAlone.push((w1.run - w0.run) / ((t1 - t0) * 1e6));
  return ((s1 - s0) / (t1 - t0)) * 1e3;
}
function collectorWindow(c) {
  const w0 = threadTime(c.tid);
  const m0 = threadTime(process.pid);
  const s0 = Number(c.vcpu.workloadStores);
  const t0 = performance.now();
  const end = t0 + WINDOW_MS;
  let next = t0;
  let last = Number.NaN;
  let harvests = 0;
  while (true) {
    const now = performance.now();
    if (now >= end) break;
    if (now < next) {
      sleepMs(Math.min(next, end) - now);
      continue;
    }
    const h0 = process.hrtime.bigint();
    const pages = c.harvest();
    const h1 = process.hrtime.bigint();
    const us = Number(h1 - h0) / 1000;
    c.harvestUs.push(us);
    if (us > 1000) c.slowHarvests.push({ window: c.alone.length, index: harvests, us: Number(us.toFixed(0)), pages });
    c.pagesPerHarvest.push(pages);
    if (!Number.isNaN(last)) c.intervalMs.push(now - last);
    last = now;
    c.reported += pages;
    harvests++;
    next += HARVEST_EVERY_MS;
    if (next < performance.now()) next = performance.now(); // overran: no catch-up burst
  }
  const s1 = Number(c.vcpu.workloadStores);
  const t1 = performance.now();
  const w1 = threadTime(c.tid);
  const m1 = threadTime(process.pid);
  c.workerCpuWith.push((w1.run - w0.run) / ((t1 - t0) * 1e6));
  c.mainCpuWith.push((m1.run - m0.run) / ((t1 - t0) * 1e6));
  c.harvestsPerS.push((harvests / (t1 - t0)) * 1e3);
  return ((s1 - s0) / (t1 - t0)) * 1e3;
}
log(`case 3: ${ROUNDS_3} rounds × 2 modes × (alone, with collector) windows of ${WINDOW_MS} ms`);
load = otherLoad();
for (let round = 0; round < ROUNDS_3; round++) {
  for (const c of round % 2 ? [...case3].reverse() : case3) {
    c.vcpu.resume();
    sleepMs(30); // the loop re-enters and refills its TLB
    let a;
    let w;
    if (round % 2) {
      w = collectorWindow(c);
      a = aloneWindow(c);
    } else {
      a = aloneWindow(c);
      w = collectorWindow(c);
    }
    c.alone.push(a);
    c.withCollector.push(w);
    c.pairRatios.push(w / a);
    await c.vcpu.pause();
  }
}
loads.case3 = load.end();
for (const c of case3) {
  c.reported += c.harvest(); // the vCPU is paused: the final harvest gets the rest
  const st = c.vcpu.stats;
  const faultsTotal = Number(st.fastFaults + st.slowFaults);
  // bitmap: every W 0→1 transition sets one bit that the next GET takes (a page is
  // re-protected only by the GET that cleared its bit); ring: one push per transition
  check(c.reported === faultsTotal, `case 3 ${c.mode}: ${c.reported} pages reported, ${faultsTotal} faults`);
  if (c.mode === "ring") {
    check(Number(st.ringPushes) === c.reported, `case 3 ring: ${st.ringPushes} pushes, ${c.reported} harvested`);
    check(st.ringFullExits === 0n && c.vm.stats.ringFullWarnings === 0, "case 3 ring: stayed under the soft limit");
    check(c.badOffsets === 0, "case 3 ring: every entry inside the slot");
  }
  records.push({
    check: `case 3 ${c.mode}: pages reported over all ${c.harvestUs.length + 2} harvests (${c.reported}) = faults taken (${faultsTotal})${c.mode === "ring" ? " = ring pushes; no ring-full exit" : ""}`,
    ok: true,
  });
}

// ---------------------------------------------------------------- close
log("closing the VMs (ends the vCPU workers)");
for (const c of case3) {
  await c.vm.close();
  await c.ended;
}
for (const s of storeVms) await s.vm.close();

// ---------------------------------------------------------------- report
const mps = (ns) => 1000 / ns; // ns per op → M ops/s
const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "—" : `${(x * 100).toFixed(0)} %`);

function rateRow(c, extra = {}) {
  const t = summarize(c.perOp);
  const rounds = c.roundP50.map(mps);
  return {
    id: c.id,
    task: c.label,
    samples: t.n,
    p50Ns: t.p50,
    p99Ns: t.p99,
    minNs: t.min,
    maxNs: t.max,
    mopsP50: mps(t.p50),
    mopsP99: t.p99 === null ? null : mps(t.p99),
    mopsBest: mps(t.min),
    roundMopsP50: rounds.map((x) => Number(x.toFixed(1))),
    roundMopsMin: Math.min(...rounds),
    roundMopsMax: Math.max(...rounds),
    // share of the timed wall time the measuring thread was on a CPU, summed over all
    // samples (main thread: getrusage; worker: schedstat, which is tick-granular)
    onCpu: c.kind === "worker" && !SCHEDSTAT ? null : c.cpuRun / c.wall,
    runqueue: c.kind === "worker" && SCHEDSTAT ? c.cpuWait / c.wall : null,
    ...extra,
  };
}
const rows1 = case1.map((c) => rateRow(c, { batch: c.batch }));
const rows2 = case2.map((c) => rateRow(c, { pagesPerRun: FAULT_PAGES }));
const byId = Object.fromEntries([...rows1, ...rows2].map((r) => [r.id, r]));
const rows3 = case3.map((c) => {
  const alone = summarize(c.alone);
  const withC = summarize(c.withCollector);
  return {
    id: `3-${c.mode}`,
    task: `3 worker loop, uniform ${LOOP_PAGES} pages, ${c.label}`,
    windows: c.alone.length,
    windowMs: WINDOW_MS,
    aloneMopsP50: alone.p50 / 1e6,
    aloneMopsMin: alone.min / 1e6,
    aloneMopsMax: alone.max / 1e6,
    withMopsP50: withC.p50 / 1e6,
    withMopsMin: withC.min / 1e6,
    withMopsMax: withC.max / 1e6,
    ratioOfMedians: withC.p50 / alone.p50,
    pairRatioP50: median(c.pairRatios),
    pairRatios: c.pairRatios.map((x) => Number(x.toFixed(3))),
    harvestsPerSP50: median(c.harvestsPerS),
    harvests: c.harvestUs.length,
    harvestUs: summarize(c.harvestUs),
    pagesPerHarvest: summarize(c.pagesPerHarvest),
    slowHarvests: c.slowHarvests,
    intervalMs: summarize(c.intervalMs),
    workerOnCpuAloneP50: SCHEDSTAT ? median(c.workerCpuAlone) : null,
    workerOnCpuWithP50: SCHEDSTAT ? median(c.workerCpuWith) : null,
    mainOnCpuWithP50: SCHEDSTAT ? median(c.mainCpuWith) : null,
    // per round, to tell a slow round caused by preemption from one that was not
    workerOnCpuAlone: SCHEDSTAT ? c.workerCpuAlone.map((x) => Number(x.toFixed(3))) : null,
    workerOnCpuWith: SCHEDSTAT ? c.workerCpuWith.map((x) => Number(x.toFixed(3))) : null,
    aloneMops: c.alone.map((x) => Number((x / 1e6).toFixed(2))),
    withMops: c.withCollector.map((x) => Number((x / 1e6).toFixed(2))),
    // the rate per second the worker was on a CPU: factors out preemption by other processes
    aloneMopsPerCpuS: SCHEDSTAT ? median(c.alone.map((x, k) => x / c.workerCpuAlone[k])) / 1e6 : null,
    withMopsPerCpuS: SCHEDSTAT ? median(c.withCollector.map((x, k) => x / c.workerCpuWith[k])) / 1e6 : null,
  };
});
/** rate with the TLB model on / rate with it off (> 1: the model helps) */
const tlbGain = (stem) => byId[`${stem}-notlb`].p50Ns / byId[`${stem}-tlb`].p50Ns;
const tlbStems = [
  ...STORE_WORKLOADS.flatMap((w) => [`1a-${w.id}`, `1b-${w.id}`]),
  "1a-uni16k-unbacked",
  "1a-seq16k-unbacked",
  "2-bitmap",
  "2-ring",
];
const ratios = {
  tlbOnVsOff: Object.fromEntries(tlbStems.map((s) => [s, tlbGain(s)])),
  workerVsMain: Object.fromEntries(
    STORE_WORKLOADS.flatMap((w) =>
      ["tlb", "notlb"].map((t) => [`${w.id}-${t}`, byId[`1a-${w.id}-${t}`].p50Ns / byId[`1b-${w.id}-${t}`].p50Ns]),
    ),
  ),
  backedVsUnbacked: {
    "1a-uni16k-tlb": byId["1a-uni16k-unbacked-tlb"].p50Ns / byId["1a-uni16k-tlb"].p50Ns,
    "1a-seq16k-tlb": byId["1a-seq16k-unbacked-tlb"].p50Ns / byId["1a-seq16k-tlb"].p50Ns,
  },
  ringVsBitmapFault: {
    tlb: byId["2-bitmap-tlb"].p50Ns / byId["2-ring-tlb"].p50Ns,
    notlb: byId["2-bitmap-notlb"].p50Ns / byId["2-ring-notlb"].p50Ns,
  },
  collectorVsAlone: Object.fromEntries(rows3.map((r) => [r.id, r.ratioOfMedians])),
};
const storeRows = rows1.filter((r) => !r.id.includes("unbacked"));
const meetsStore = storeRows.filter((r) => r.mopsP50 >= TARGETS.storesMps);
const targets = [
  ...storeRows
    .filter((r) => r.id.endsWith("-tlb"))
    .map((r) => ({
      target: `≥ ${TARGETS.storesMps} M stores/s per vCPU: ${r.task}`,
      value: `${fmt(r.mopsP50)} M/s (rounds ${fmt(r.roundMopsMin)}–${fmt(r.roundMopsMax)})`,
      met: r.mopsP50 >= TARGETS.storesMps,
    })),
  ...rows2
    .filter((r) => !r.id.includes("unbacked"))
    .map((r) => ({
      target: `≥ ${TARGETS.faultMps} M first writes/s per vCPU: ${r.task}`,
      value: `${fmt(r.mopsP50)} M/s (rounds ${fmt(r.roundMopsMin)}–${fmt(r.roundMopsMax)})`,
      met: r.mopsP50 >= TARGETS.faultMps,
    })),
  ...rows3.map((r) => ({
    target: `store rate with collector ≥ ${TARGETS.collectorShare * 100} % of alone: ${r.task}`,
    value: `${(r.ratioOfMedians * 100).toFixed(1)} % (median of pairs ${(r.pairRatioP50 * 100).toFixed(1)} %)`,
    met: r.ratioOfMedians >= TARGETS.collectorShare,
  })),
];

const rateHeader = [
  "task",
  "samples",
  "p50 ns/op",
  "p99 ns/op",
  "M ops/s p50",
  "M ops/s p99",
  "round p50s M/s",
  "best M/s",
  "on-CPU",
];
const rateCells = (r) => [
  r.task,
  String(r.samples),
  fmt(r.p50Ns, 2),
  fmt(r.p99Ns, 2),
  fmt(r.mopsP50),
  fmt(r.mopsP99),
  `${fmt(r.roundMopsMin)}–${fmt(r.roundMopsMax)}`,
  fmt(r.mopsBest),
  pct(r.onCpu),
];
const collectorHeader = [
  "collector",
  "alone M/s p50",
  "with M/s p50",
  "with / alone",
  "pairs p50",
  "harvests/s",
  "pages/harvest p50 (p99)",
  "harvest µs p50 (p99)",
  "interval ms p50 (p99)",
  "worker on-CPU alone / with",
  "main on-CPU",
];
const collectorCells = (r) => [
  r.task.replace(/^3 worker loop, uniform \d+ pages, /, ""),
  fmt(r.aloneMopsP50),
  fmt(r.withMopsP50),
  `${(r.ratioOfMedians * 100).toFixed(1)} %`,
  `${(r.pairRatioP50 * 100).toFixed(1)} %`,
  fmt(r.harvestsPerSP50, 0),
  `${fmt(r.pagesPerHarvest.p50, 0)} (${fmt(r.pagesPerHarvest.p99, 0)})`,
  `${fmt(r.harvestUs.p50)} (${fmt(r.harvestUs.p99)})`,
  `${fmt(r.intervalMs.p50, 2)} (${fmt(r.intervalMs.p99, 2)})`,
  `${pct(r.workerOnCpuAloneP50)} / ${pct(r.workerOnCpuWithP50)}`,
  pct(r.mainOnCpuWithP50),
];
const x2 = (v) => `${v.toFixed(2)}×`;
const tlbLines = [
  ...STORE_WORKLOADS.map(
    (w) =>
      `${w.label}: rate with the TLB model on = ${x2(ratios.tlbOnVsOff[`1a-${w.id}`])} the rate with it off (runSync),` +
      ` ${x2(ratios.tlbOnVsOff[`1b-${w.id}`])} (worker)` +
      (w.id === "hot512" ? "" : `, ${x2(ratios.tlbOnVsOff[`1a-${w.id}-unbacked`])} (runSync, unbacked)`),
  ),
  `first write, bitmap: TLB on = ${x2(ratios.tlbOnVsOff["2-bitmap"])} off`,
  `first write, ring: TLB on = ${x2(ratios.tlbOnVsOff["2-ring"])} off`,
];
const rttSummary = summarize(rtt);
const otherLines = [
  `worker run() vs runSync (rate, same workload): ${Object.entries(ratios.workerVsMain)
    .map(([k, v]) => `${k} ${x2(v)}`)
    .join(", ")}`,
  `backed vs unbacked slot (rate, tlb on; unbacked skips the guest-memory store): ${Object.entries(
    ratios.backedVsUnbacked,
  )
    .map(([k, v]) => `${k} ${x2(v)}`)
    .join(", ")}`,
  `first write, ring vs bitmap (rate): ${x2(ratios.ringVsBitmapFault.tlb)} (tlb on), ${x2(ratios.ringVsBitmapFault.notlb)} (tlb off)`,
  ...rows3.map(
    (r) =>
      `${r.task}: ${(r.ratioOfMedians * 100).toFixed(1)} % of alone (median of per-pair ratios ${(r.pairRatioP50 * 100).toFixed(1)} %,` +
      ` pairs ${r.pairRatios.join(" ")}); per on-CPU second ${fmt(r.aloneMopsPerCpuS)} → ${fmt(r.withMopsPerCpuS)} M/s` +
      "",
  ),
  `worker run() message round trip (batch = 1): p50 ${fmt(rttSummary.p50)} µs, p99 ${fmt(rttSummary.p99)} µs`,
  `other processes' CPU during the phases (cores of ${env.cores}): ${Object.entries(loads)
    .map(([k, v]) => `${k} ${v ? `${v.otherCores} (steal ${v.stealPct} %, our minor faults ${v.minorFaults})` : "n/a"}`)
    .join(", ")}`,
  `meets ${TARGETS.storesMps} M stores/s (p50): ${meetsStore.length ? meetsStore.map((r) => r.task).join("; ") : "none"}`,
];

console.log("\n1. stores to writable pages, 2. first writes (fast fault + report); higher M ops/s is better");
console.log(textTable(rateHeader, [...rows1, ...rows2].map(rateCells)));
console.log(`\n3. worker vCPU loop vs. a collector on the main thread (${WINDOW_MS} ms windows)`);
console.log(textTable(collectorHeader, rows3.map(collectorCells)));
console.log("\n4. cost of the TLB model (same run)");
for (const s of tlbLines) console.log(`  ${s}`);
console.log("\nother same-run ratios");
for (const s of otherLines) console.log(`  ${s}`);
console.log("\ntargets");
for (const s of targetLines(targets)) console.log(s);
console.log("\nchecks (outside the timed regions)");
for (const r of records) console.log(`  ok  ${r.check}`);
const elapsed = seconds();
env.loadAverageAtEnd = loadAverage();
console.log(
  `\ntotal run time ${elapsed.toFixed(1)} s; load average at start ${env.loadAverageAtStart.join(" ")}, at end ${env.loadAverageAtEnd.join(" ")}`,
);

const date = new Date().toISOString();
const results = {
  date,
  environment: env,
  otherLoad: loads,
  config: {
    rounds: ROUNDS,
    storeSampleMs: STORE_SAMPLE_MS,
    storeSamplesPerRound: STORE_SAMPLES,
    workerSampleMs: WORKER_SAMPLE_MS,
    workerSamplesPerRound: WORKER_SAMPLES,
    faultPages: FAULT_PAGES,
    faultSamplesPerRound: FAULT_SAMPLES,
    rounds3: ROUNDS_3,
    windowMs: WINDOW_MS,
    harvestEveryMs: HARVEST_EVERY_MS,
    loopBatch: LOOP_BATCH,
    ringEntries: RING,
  },
  rows: { case1: rows1, case2: rows2, case3: rows3 },
  workerRoundTripUs: rttSummary,
  ratios,
  targets,
  checks: records,
  totalSeconds: elapsed,
};
/** Slow harvests of a case-3 row, grouped by round, with that round's with/alone ratio. */
function slowByRound(r) {
  const rounds = new Map();
  for (const h of r.slowHarvests) rounds.set(h.window, [...(rounds.get(h.window) ?? []), h]);
  return [...rounds.entries()]
    .map(([round, hs]) => {
      const us = hs.map((h) => h.us);
      const which = hs.length <= 3 ? ` (#${hs.map((h) => h.index).join(", #")})` : "";
      return (
        `round ${round}: ${hs.length}${which}, ${Math.min(...us)}–${Math.max(...us)} µs,` +
        ` that round's with/alone ${(r.pairRatios[round] * 100).toFixed(0)} %`
      );
    })
    .join("; ");
}
const busy = env.otherCoresAtStart > 0.3 || Object.values(loads).some((v) => v && v.otherCores > 0.3);
const md = [
  "# vCPU threads: store rate, first-write rate, collector interference, TLB model cost",
  "",
  `${date} · ${env.cpu}, ${env.cores} cores · Node ${env.node} (V8 ${env.v8}) · commit ${env.gitHead}, core wasm ${env.coreWasmSha256}` +
    ` · load average ${env.loadAverageAtStart.join(" ")} → ${env.loadAverageAtEnd.join(" ")}.` +
    " Rates are per vCPU, higher is better; p50 = median over all samples, p99 = the slow tail (ns/op), given with ≥ 50 samples;" +
    " round p50s = the range of the per-round medians. Generated by `node bench/threads.js --save`; one process, so all ratios are same-run.",
  "",
  `Other processes' CPU at the start ${env.otherCoresAtStart} cores; during each phase (cores of ${env.cores}): ${Object.entries(
    loads,
  )
    .map(([k, v]) => `${k} ${v ? `${v.otherCores} (steal ${v.stealPct} %, our minor faults ${v.minorFaults})` : "n/a"}`)
    .join(", ")}.` +
    (busy ? " **The machine was shared with other sessions' work**." : "") +
    " on-CPU = share of the timed wall time the measuring thread was on a CPU (main thread: getrusage, which also" +
    " counts the process's helper threads, hence values a little above 100 %; worker: schedstat).",
  "",
  "## 1–2. Stores to writable pages; first writes (fast fault + report)",
  "",
  mdTable(rateHeader, [...rows1, ...rows2].map(rateCells)),
  "",
  `## 3. vCPU loop on a worker vs. a collector on the main thread (${ROUNDS_3} pairs of ${WINDOW_MS} ms windows)`,
  "",
  mdTable(collectorHeader, rows3.map(collectorCells)),
  "",
  "## 4. Cost of the TLB model (same run)",
  "",
  ...tlbLines.map((s) => `- ${s}`),
  "",
  "## Other same-run ratios",
  "",
  ...otherLines.map((s) => `- ${s}`),
  "",
  "## Targets",
  "",
  ...targetsMd(targets),
  "",
  "Checks (outside the timed regions):",
  "",
  ...records.map((r) => `- ${r.check}`),
  "",
  "Notes",
  `- 1a: each sample is one \`runSync()\` of a batch sized to ~${STORE_SAMPLE_MS} ms; 1b: one \`await vcpu.run()\` on the` +
    ` vCPU's worker of ~${WORKER_SAMPLE_MS} ms, timed on the main thread (includes one message round trip, p50` +
    ` ${fmt(rttSummary.p50)} µs). Every page was mapped writable before (first write, GET, second write), and` +
    " the fault counters show no fault during the timed runs. 1a and 1b cases are interleaved in the same rounds.",
  `- 2: each sample is \`runSync()\` of a sequential workload over ${FAULT_PAGES} write-protected pages, batch =` +
    " pages; the LogMode harvest that follows (GET; or kick, collect, reset) re-arms them and is checked to report exactly" +
    " those pages, in order.",
  "- [unbacked] rows: the same slot without guest memory (the store itself is skipped), to separate the tracking" +
    " cost from the cost of storing to the first 8 bytes of 16384 pages 4 KiB apart (cache-set aliasing, host TLB misses).",
  "- 3: each harvest is the mode's LogMode `collectDirtyPages` (the sequence compare and migrate use), timed whole.",
  `- 3: the loop is \`vcpu.startLoop()\` (KVM_RUN batches of ${LOOP_BATCH} stores); the rate is the change of` +
    " `vcpu.workloadStores` over a window. Alone and collector windows alternate (ABBA by round); the collector" +
    " blocks in `Atomics.wait` between harvests. The pair ratios show the noise level.",
  ...rows3.map(
    (r) =>
      `- 3, ${r.id}: ${r.slowHarvests.length} of ${r.harvests} harvests took > 1 ms` +
      (r.slowHarvests.length ? `: ${slowByRound(r)}.` : ".") +
      (r.slowHarvests.some((h) => h.index === 0)
        ? " The first harvest of a collector window that starts right after `resume()` can find the worker woken" +
          " onto the collector's CPU; the remote TLB flush in the harvest then spins for the waited-for vCPU, which" +
          " cannot run until the scheduler preempts the spinner (a 4 ms tick)."
        : ""),
  ),
  "",
];
for (const p of writeResults(cli.save, "threads", results, md)) log(`wrote ${p}`);
