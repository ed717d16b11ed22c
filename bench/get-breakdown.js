// Where the time of a classic GET goes (a diagnostic micro-benchmark, not part of `npm run
// bench`): node bench/get-breakdown.js [--iterations n]
//
// Each task runs a fixed number of iterations (default 200, after 10 warm-up ones): most
// timed parts here are far cheaper than their untimed setup (re-dirtying the pages), so a
// time budget would spend minutes in setup.
//
//   1. Phases of Vm.getDirtyLog: the core call (kvm_get_dirty_log) against the host half
//      (allocate the result, copy the chunks listed in the scratch list, kvm_dirty_log_done).
//   2. Experimental variants of the core, built into a temporary directory from a patched
//      copy of assembly/ (the tree is not touched) and instantiated over the same memory:
//        no-reprotect   the word exchanges only (pages re-armed afterwards, untimed)
//        walk-cache     one TDP walk per 512-page leaf table per GET instead of per word
//                       (safe: the table structure only changes under mmu_lock, which
//                       GET holds for write)
//        walk-cache+st  and clear the bit with a plain store instead of a locked `and`
//                       (not safe for D under PML; see the caveat printed with the results)
//      A variant whose patch no longer applies to the current core is skipped.
//
// Slots are unbacked (GET does not touch guest bytes) at gpa 0x1_0000_0000.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Bench, hrtimeNowTimestampProvider } from "tinybench";
import { KVM_MEM_LOG_DIRTY_PAGES, createVm } from "../dist/index.js";
import { cliOptions, GPA, MIB, PAGE } from "./common.js";

const ITERATIONS = cliOptions("node bench/get-breakdown.js [--iterations n (default 200)]")("--iterations", 200);
const root = fileURLToPath(new URL("..", import.meta.url));

// ---------------------------------------------------------------- variant cores
const CLASSIC_CALL = "      enable_log_dirty_pt_masked(vm, s, as_id, (<u64>w) << 6, mask);\n";
const LOOP_HEAD = "  const second = slot_second(s);\n  write_lock(vm);\n";
const WALK_CACHE_HEAD = `  const second = slot_second(s);
  const init_set = manual_protect_and_init_set(vm);
  const bit = load<u32>(vm + VM_PML) == 0 ? SPTE_W : SPTE_D;
  const base_gfn = load<u64>(s + SLOT_BASE_GFN);
  let table: usize = 0;
  let table_gfn: u64 = 0xffff_ffff_ffff_ffff;
  write_lock(vm);
`;
const walkCacheBody = (clear) => `      if (init_set) {
        enable_log_dirty_pt_masked(vm, s, as_id, (<u64>w) << 6, mask);
      } else {
        const gfn = base_gfn + ((<u64>w) << 6);
        let m = mask;
        while (m != 0) {
          const g = gfn + ctz<u64>(m);
          m &= m - 1;
          if (g >> 9 != table_gfn) {
            table_gfn = g >> 9;
            const tw = tdp_walk(vm, as_id, g);
            table = (tw & 7) == 1 ? (tw & ~(<usize>0xfff)) : 0;
          }
          if (table == 0) continue;
          const p = table + ((<usize>(g & 511)) << 3);
          ${clear}
        }
      }
`;
const EXTRA_IMPORTS = 'import { tdp_walk as tdp_walk_x } from "./tdp";\nimport { SPTE_D, SPTE_W } from "./spte";\n';
const VARIANTS = {
  "no-reprotect": [[CLASSIC_CALL, ""]],
  "walk-cache": [
    [LOOP_HEAD, WALK_CACHE_HEAD],
    [
      CLASSIC_CALL,
      walkCacheBody("if ((atomic.load<u64>(p) & bit) != 0) atomic.and<u64>(p, ~bit);").replace(
        "tdp_walk(",
        "tdp_walk_x(",
      ),
    ],
  ],
  "walk-cache+st": [
    [LOOP_HEAD, WALK_CACHE_HEAD],
    [
      CLASSIC_CALL,
      walkCacheBody("const e = atomic.load<u64>(p);\n          if ((e & bit) != 0) store<u64>(p, e & ~bit);").replace(
        "tdp_walk(",
        "tdp_walk_x(",
      ),
    ],
  ],
};

function buildVariants() {
  const dir = mkdtempSync(join(tmpdir(), "dirtlog-variants-"));
  const out = {};
  try {
    cpSync(join(root, "assembly"), join(dir, "assembly"), { recursive: true });
    const file = join(dir, "assembly", "dirty_bitmap.ts");
    const original = readFileSync(file, "utf8");
    const asc = join(root, "node_modules", "assemblyscript", "bin", "asc.js");
    const config = JSON.parse(readFileSync(join(root, "asconfig.json"), "utf8"));
    const build = (name, source) => {
      writeFileSync(file, source);
      const wasm = join(dir, `${name}.wasm`);
      const flags = [
        "--optimizeLevel",
        "3",
        "--shrinkLevel",
        "0",
        "--noAssert",
        "--runtime",
        "stub",
        "--importMemory",
        "--sharedMemory",
        "--initialMemory",
        String(config.options.initialMemory),
        "--maximumMemory",
        String(config.options.maximumMemory),
        "--enable",
        config.options.enable.join(","),
      ];
      execFileSync(process.execPath, [asc, join(dir, "assembly", "index.ts"), "-o", wasm, ...flags], { stdio: "pipe" });
      return new WebAssembly.Module(readFileSync(wasm));
    };
    out.base = build("base", original);
    for (const [name, patches] of Object.entries(VARIANTS)) {
      let src = name === "no-reprotect" ? original : EXTRA_IMPORTS + original;
      let applies = true;
      for (const [from, to] of patches) {
        if (!src.includes(from)) applies = false;
        src = src.replace(from, to);
      }
      if (!applies) {
        console.error(`[breakdown] variant ${name}: patch does not apply to the current core, skipped`);
        continue;
      }
      try {
        out[name] = build(name, src);
      } catch (e) {
        console.error(`[breakdown] variant ${name}: build failed, skipped\n${e.stderr ?? e}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

// ---------------------------------------------------------------- setup
async function mapped(gib) {
  const vm = await createVm({ maxMemoryBytes: 256 * MIB, mmuPoolBytes: 40 * MIB });
  const npages = gib * 262144;
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: GPA, memorySize: npages * PAGE });
  const vcpu = vm.createVcpu(0);
  vcpu.writeStrided(GPA, PAGE, npages, 1);
  vm.getDirtyLog(0);
  return { vm, vcpu, npages };
}

const modules = buildVariants();
console.log(`variants built: ${Object.keys(modules).join(", ")}`);
const bench = new Bench({
  time: 0,
  iterations: ITERATIONS,
  warmupTime: 0,
  warmupIterations: 10,
  timestampProvider: hrtimeNowTimestampProvider,
  throws: true,
});
const rows = [];
let count = 0;
let sink = 0;

for (const [gib, k] of [
  [1, 100],
  [1, 10],
  [1, 1],
  [8, 100],
]) {
  const s = await mapped(gib);
  const n = Math.ceil(s.npages / k);
  const cores = Object.fromEntries(
    Object.entries(modules).map(([name, m]) => [
      name,
      new WebAssembly.Instance(m, { env: { memory: s.vm.memory } }).exports,
    ]),
  );
  const addr = s.vm.addr;
  const label = `${gib} GiB ${100 / k} %`;
  const dirty = () => s.vcpu.writeStrided(GPA, k * PAGE, n, 7);
  const add = (what, fn, after) => {
    rows.push({ label, what, n });
    bench.add(`${label} | ${what}`, fn, { beforeEach: dirty, afterEach: after });
  };
  // 1. phases with the real core
  add("Vm.getDirtyLog (whole)", () => {
    sink |= s.vm.getDirtyLog(0)[0];
  });
  const base = cores.base;
  const bytes = Math.ceil(s.npages / 64) * 8;
  const hostHalf = () => {
    const out = new Uint8Array(bytes);
    const u8 = new Uint8Array(s.vm.memory.buffer);
    const src = base.kvm_dirty_log_source(addr, 0) >>> 0;
    const list = new Uint32Array(s.vm.memory.buffer, base.kvm_dirty_log_scratch(addr, 0) >>> 0, count);
    for (let j = 0; j < count; j++) {
      const at = list[j] * 512;
      out.set(u8.subarray(src + at, src + Math.min(bytes, at + 512)), at);
    }
    base.kvm_dirty_log_done(addr, 0, count);
    sink |= out[0];
  };
  add(
    "core kvm_get_dirty_log only",
    () => {
      count = base.kvm_get_dirty_log(addr, 0);
    },
    hostHalf,
  );
  bench.add(`${label} | host half only`, hostHalf, {
    beforeEach() {
      dirty();
      count = base.kvm_get_dirty_log(addr, 0);
    },
  });
  rows.push({ label, what: "host half only (alloc + copy + done)", n, task: `${label} | host half only` });
  // 2. variants (core call only)
  for (const [name, core] of Object.entries(cores)) {
    if (name === "base") continue;
    add(
      `core variant: ${name}`,
      () => {
        count = core.kvm_get_dirty_log(addr, 0);
      },
      () => {
        if (name === "no-reprotect") {
          // put the taken words back and let the real core re-arm the pages (untimed)
          const u8 = new Uint8Array(s.vm.memory.buffer);
          const second = base.kvm_dirty_log_second(addr, 0) >>> 0;
          const live = second - bytes;
          const summary = second + bytes;
          u8.copyWithin(live, second, second + bytes);
          u8.fill(0xff, summary, summary + Math.ceil(bytes / 512) * 8);
          base.kvm_dirty_log_done(addr, 0, count);
          count = base.kvm_get_dirty_log(addr, 0);
        }
        base.kvm_dirty_log_done(addr, 0, count);
      },
    );
  }
}

bench.addEventListener("cycle", (e) =>
  console.error(`[breakdown] ${e.task.name}: p50 ${(e.task.result.latency.p50 * 1000).toFixed(1)} µs`),
);
bench.runSync();
console.log(`(results consumed: ${sink})`);

console.log("\nclassic GET breakdown (p50 / p99 µs, lower is better)");
for (const r of rows) {
  const t = bench.getTask(r.task ?? `${r.label} | ${r.what}`);
  const l = t.result.latency;
  console.log(
    `  ${r.label.padEnd(11)} ${r.what.padEnd(38)} ${(l.p50 * 1000).toFixed(1).padStart(8)}  ${(l.p99 * 1000).toFixed(1).padStart(8)}   ${((l.p50 * 1e6) / r.n).toFixed(2).padStart(6)} ns/dirty page`,
  );
}
console.log(
  "\nCaveat for walk-cache+st: a plain store is safe only while nothing else can change the\n" +
    "SPTE concurrently. For W (no PML) that holds today: outside mmu_lock only the fast path\n" +
    "writes SPTEs, and only ones whose W is clear. For D under PML it does not (pml.ts sets D\n" +
    "with an atomic or from the guest's write path), so the atomic and must stay there. The\n" +
    "kernel draws the same line in spte_needs_atomic_update().",
);
