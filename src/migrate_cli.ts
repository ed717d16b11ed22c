// `dirtlog migrate`: pre-copy live migration as QEMU does it, over a modelled link, once per
// tracking mode on a fresh VM with the same guest. vCPU worker threads write at their rate
// while each round is "on the wire" (bytes / bandwidth of real time); pre-copy ends when the
// dirty set left fits the downtime limit at the bandwidth, or gives up after --max-rounds
// (converged: false, still exit 0: the final stop-and-copy takes what is left). With
// --backed the guest has real bytes, copied and checked byte for byte (exit 1 if they
// differ). The options shared with `dirtlog compare` are parsed by compare's parser.
import { createRequire } from "node:module";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { UsageError, parseCompareArgs, parseOptions } from "./compare_cli.js";
import { vmSizing } from "./compare.js";
import type { CompareScenario } from "./compare_types.js";
import { PAGES_PER_MB } from "./dirtylimit.js";
import { parseLogMode } from "./log_mode.js";
import { type Convergence, type MigrationRound, migrate } from "./migrate.js";
import { UnitError, formatSize, parseBandwidth, parseDuration, parseRate } from "./units.js";
import { createVm } from "./vm.js";
import { splitRegion } from "./workload.js";

export const DEFAULTS = {
  memory: "1GiB",
  vcpus: "2",
  workload: "uniform",
  "dirty-rate": "20k",
  modes: "bitmap,ring:4096",
  bandwidth: "1Gbit",
  "downtime-limit": "300ms",
  "max-rounds": "30",
  convergence: "none",
  seed: "1",
};

/** The issue's scenario (a 2021 QEMU dirty-ring talk): 24 GiB, 8 vCPUs writing 800 MB/s over 20 GiB, 10 GbE. */
export const PRESETS: Record<string, { args: string[]; workingSetBytes: number; text: string }> = {
  "qemu-2021": {
    args: [
      "--memory",
      "24GiB",
      "--vcpus",
      "8",
      "--dirty-rate",
      "100MB/s",
      "--bandwidth",
      "10GbE",
      "--modes",
      "bitmap,ring:4096",
    ],
    workingSetBytes: 20 * 2 ** 30,
    text: "24 GiB unbacked, 8 vCPUs writing uniformly 100 MB/s each (800 MB/s) over the first 20 GiB, 10 GbE, bitmap and ring:4096",
  },
};

export const HELP = `usage: dirtlog migrate [options]

Pre-copy live migration as QEMU does it, over a modelled link: the first round sends every
page, each later round harvests and sends what was dirtied meanwhile; each round's bytes
take bytes / bandwidth on the wire, during which the guest keeps writing. When the dirty
set left fits --downtime-limit at --bandwidth, the vCPUs stop for the final harvest and
send; after --max-rounds rounds the migration gives up (converged: false) and the final
stop-and-copy takes whatever is left. Once per mode, on a fresh VM with the same guest.

options (defaults in brackets):
  --memory SIZE        guest memory, e.g. 24GiB, 512MiB [${DEFAULTS.memory}]
  --backed             real guest bytes (≤ 3 GiB), copied and checked byte for byte
                       [off: tracking only, bytes accounted on the wire]
  --vcpus N            vCPU threads, 1..64 [${DEFAULTS.vcpus}]
  --workload W         sequential | uniform | hot-set[:HOT%[:WRITES%]] | zipf[:S] |
                       strided[:PAGES] [${DEFAULTS.workload}]
  --dirty-rate R       guest writes per second per vCPU: pages/s (20k), bytes/s (100MB/s)
                       or max [${DEFAULTS["dirty-rate"]}]
  --modes LIST         comma-separated: bitmap, manual[:CHUNK], ring[:ENTRIES] [${DEFAULTS.modes}]
  --bandwidth B        the link: 10Gbit, 800Mbit/s, 10GbE, 1GbE, 128MB/s [${DEFAULTS.bandwidth}]
  --downtime-limit T   the stop-and-copy allowed, e.g. 300ms (QEMU's default) [${DEFAULTS["downtime-limit"]}]
  --max-rounds N       pre-copy rounds before giving up, 0..100000 [${DEFAULTS["max-rounds"]}]
  --convergence C      none | auto-converge | dirty-limit[:RATE] (RATE per vCPU, e.g.
                       dirty-limit:1MB/s, QEMU's default; ring modes only) [${DEFAULTS.convergence}]
  --seed N             workload RNG seed [${DEFAULTS.seed}]
  --preset NAME        qemu-2021: ${PRESETS["qemu-2021"].text}
                       (other options may still be given after it)
  --json               print one JSON document instead of the table
  --out DIR            also write DIR/report.json and a self-contained DIR/report.html
  -h, --help           this text

Times are modelled: each round is its harvest (measured) plus its wire time; the downtime
is the final harvest plus the bytes left / bandwidth. Exit status: 0 (converged or not);
1 if the destination differs from the source; 2 for bad usage.`;

function usage(option: string, value: string, accepted: string): never {
  throw new UsageError(`--${option} ${JSON.stringify(value)}: ${accepted}`);
}

function unit<T>(option: string, value: string, parse: (s: string) => T): T {
  try {
    return parse(value);
  } catch (e) {
    if (e instanceof UnitError) usage(option, value, e.message);
    throw e;
  }
}

export interface MigrateSettings {
  scenario: Omit<CompareScenario, "durationMs" | "intervalMs">;
  /** The pages the vCPUs write: the first workingSetBytes of the guest. */
  workingSetBytes: number;
  bandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  maxRounds: number;
  convergence: Convergence;
  /** dirty-limit's quota per vCPU, MB/s (MiB/s). */
  dirtyLimitMBps?: number;
  preset?: string;
}

export interface ParsedMigrate {
  settings: MigrateSettings;
  json: boolean;
  out?: string;
}

export function parseMigrateArgs(argv: string[]): ParsedMigrate | "help" {
  let values: Record<string, string | boolean | undefined>;
  const options = {
    memory: { type: "string" },
    backed: { type: "boolean" },
    vcpus: { type: "string" },
    workload: { type: "string" },
    "dirty-rate": { type: "string" },
    modes: { type: "string" },
    bandwidth: { type: "string" },
    "downtime-limit": { type: "string" },
    "max-rounds": { type: "string" },
    convergence: { type: "string" },
    seed: { type: "string" },
    preset: { type: "string" },
    json: { type: "boolean" },
    out: { type: "string" },
    help: { type: "boolean", short: "h" },
  } as const;
  values = parseOptions(argv, options);
  if (values.help) return "help";
  let workingSetBytes: number | undefined;
  const presetName = values.preset as string | undefined;
  if (presetName !== undefined) {
    const preset = PRESETS[presetName];
    if (!preset) usage("preset", presetName, `one of ${Object.keys(PRESETS).join(", ")}`);
    // the preset first, the options given after it win
    values = parseOptions([...preset.args, ...argv], options);
    workingSetBytes = preset.workingSetBytes;
  }
  const get = (k: keyof typeof DEFAULTS) => (values[k] as string | undefined) ?? DEFAULTS[k];

  const shared = parseCompareArgs([
    "--memory",
    get("memory"),
    ...(values.backed ? ["--backed"] : []),
    "--vcpus",
    get("vcpus"),
    "--workload",
    get("workload"),
    "--dirty-rate",
    get("dirty-rate"),
    "--modes",
    get("modes"),
    "--seed",
    get("seed"),
  ]);
  if (shared === "help") return "help"; // cannot happen: no --help passed
  const { durationMs: _d, intervalMs: _i, ...scenario } = shared.scenario;
  if (workingSetBytes !== undefined && workingSetBytes > scenario.memoryBytes) workingSetBytes = scenario.memoryBytes;

  const bwText = get("bandwidth");
  const bandwidthBytesPerSec = unit("bandwidth", bwText, parseBandwidth);
  if (bandwidthBytesPerSec < 1e3 || bandwidthBytesPerSec > 1e13) usage("bandwidth", bwText, "from 8kbit to 80Tbit");
  const dtText = get("downtime-limit");
  const downtimeLimitMs = unit("downtime-limit", dtText, parseDuration);
  if (downtimeLimitMs > 3_600_000) usage("downtime-limit", dtText, "at most 1h");
  const roundsText = get("max-rounds");
  if (!/^\d+$/.test(roundsText) || Number(roundsText) > 100_000)
    usage("max-rounds", roundsText, "a whole number from 0 to 100000");
  const maxRounds = Number(roundsText);

  const convText = get("convergence");
  const [kind, rate, ...more] = convText.split(":");
  let dirtyLimitMBps: number | undefined;
  if (
    !["none", "auto-converge", "dirty-limit"].includes(kind) ||
    more.length > 0 ||
    (rate !== undefined && kind !== "dirty-limit")
  ) {
    usage("convergence", convText, "none, auto-converge or dirty-limit[:RATE], e.g. dirty-limit:1MB/s");
  }
  if (kind === "dirty-limit") {
    if (rate !== undefined) {
      const p = unit("convergence", convText, () => parseRate(rate));
      if (p === 0) usage("convergence", convText, "dirty-limit needs a rate above 0, e.g. dirty-limit:1MB/s");
      dirtyLimitMBps = p / PAGES_PER_MB;
    } else dirtyLimitMBps = 1;
    const notRing = scenario.modes.filter((m) => parseLogMode(m).spec.kind !== "dirty-ring");
    if (notRing.length) usage("convergence", convText, `dirty-limit needs a dirty ring; not for ${notRing.join(", ")}`);
  }
  if (values.out !== undefined && (values.out as string).trim() === "") usage("out", "", "a directory");
  return {
    settings: {
      scenario,
      workingSetBytes: workingSetBytes ?? scenario.memoryBytes,
      bandwidthBytesPerSec,
      downtimeLimitMs,
      maxRounds,
      convergence: kind as Convergence,
      ...(dirtyLimitMBps !== undefined ? { dirtyLimitMBps } : {}),
      ...(presetName !== undefined ? { preset: presetName } : {}),
    },
    json: values.json === true,
    out: values.out as string | undefined,
  };
}

export interface MigrateModeResult {
  mode: string;
  converged: boolean;
  /** Modelled: rounds (harvest + wire time) and downtime, ms. */
  totalMs: number;
  downtimeMs: number;
  /** Pre-copy rounds (round 0 sends every page). */
  rounds: MigrationRound[];
  /** Pages sent in the stop-and-copy. */
  finalRoundPages: number;
  pagesSent: number;
  bytesSent: number;
  convergence: { kind: Convergence; startedAtRound: number | null; finalThrottle: number };
  /** Guest stores during the migration. */
  guestStores: number;
  /** Source equals destination byte for byte (backed), or null (tracking only). */
  equal: boolean | null;
  /** Real time this mode took, ms. */
  wallMs: number;
}

export interface MigrateCliResult {
  tool: "dirtlog migrate";
  settings: MigrateSettings;
  modes: MigrateModeResult[];
  ok: boolean;
}

const GPA = 0x1_0000_0000;
const PAGE = 4096;

export async function runMigrate(
  s: MigrateSettings,
  onProgress?: (mode: string, round: MigrationRound) => void,
): Promise<MigrateCliResult> {
  const sc = s.scenario;
  const modes: MigrateModeResult[] = [];
  for (const name of sc.modes) {
    const mode = parseLogMode(name);
    const wall = performance.now();
    const vm = await createVm({ ...vmSizing(sc, mode), ...mode.vmOptions });
    try {
      mode.createVmDone(vm);
      const pages = Math.floor(sc.memoryBytes / PAGE);
      vm.setUserMemoryRegion({
        slot: 0,
        flags: mode.slotFlags,
        guestPhysAddr: GPA,
        memorySize: pages * PAGE,
        backed: sc.backed,
      });
      const target = sc.dirtyRatePagesPerSec;
      const batch = target > 0 ? Math.max(16, Math.min(4096, Math.round(target / 1000))) : 4096;
      const seed = BigInt(sc.seed);
      for (const [i, r] of splitRegion(GPA, Math.floor(s.workingSetBytes / PAGE), sc.vcpus).entries()) {
        vm.createVcpu(i).setWorkload({
          pattern: sc.pattern,
          gpa: r.gpa,
          pages: r.pages,
          batch,
          seed: BigInt.asUintN(64, seed * 0x9e3779b97f4a7c15n + BigInt(i + 1)) || 1n,
          ...(sc.pattern === "hot-set"
            ? {
                hotFraction: sc.hotFraction ?? 0.9,
                hotPages: Math.max(1, Math.floor(r.pages * (sc.hotPagesFraction ?? 0.05))),
              }
            : {}),
          ...(sc.zipfS !== undefined ? { zipfS: sc.zipfS } : {}),
          ...(sc.stride !== undefined ? { stride: sc.stride } : {}),
        });
      }
      vm.iteration = 1n;
      for (const v of vm.vcpuList) await v.startLoop({ rate: target });
      await new Promise((r) => setTimeout(r, 200)); // the guest is busy before migration starts
      const stores = () => vm.vcpuList.reduce((a, v) => a + Number(v.workloadStores), 0);
      const before = stores();
      const r = await migrate(vm, {
        bandwidthBytesPerSec: s.bandwidthBytesPerSec,
        downtimeLimitMs: s.downtimeLimitMs,
        maxRounds: s.maxRounds,
        convergence: s.convergence,
        ...(s.convergence === "dirty-limit" ? { dirtyLimitMBps: s.dirtyLimitMBps ?? 1 } : {}),
        onRound: (round) => {
          vm.iteration += 1n; // a page missed once then differs
          onProgress?.(mode.name, round);
        },
      });
      modes.push({
        mode: mode.name,
        converged: r.converged ?? false,
        totalMs: r.totalMs ?? 0,
        downtimeMs: r.downtimeMs,
        rounds: r.rounds,
        finalRoundPages: r.finalRoundPages,
        pagesSent: r.pagesSent,
        bytesSent: r.bytesSent ?? r.pagesSent * PAGE,
        convergence: r.convergence ?? { kind: s.convergence, startedAtRound: null, finalThrottle: 0 },
        guestStores: stores() - before,
        equal: sc.backed ? r.equal : null,
        wallMs: performance.now() - wall,
      });
    } finally {
      await vm.close();
    }
  }
  return { tool: "dirtlog migrate", settings: s, modes, ok: modes.every((m) => m.equal !== false) };
}

const ms = (x: number) => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${x.toFixed(1)} ms`);

export function renderMigrateText(r: MigrateCliResult): string {
  const s = r.settings;
  const sc = s.scenario;
  const lines = [
    `${formatSize(sc.memoryBytes)} ${sc.backed ? "backed" : "unbacked"}, ${sc.vcpus} vCPUs, ${sc.pattern} at ${sc.dirtyRatePagesPerSec || "max"} pages/s per vCPU` +
      `${s.workingSetBytes < sc.memoryBytes ? ` over ${formatSize(s.workingSetBytes)}` : ""}; link ${((s.bandwidthBytesPerSec * 8) / 1e9).toFixed(3)} Gbit/s, ` +
      `downtime limit ${s.downtimeLimitMs} ms, max rounds ${s.maxRounds}, convergence ${s.convergence}${s.dirtyLimitMBps !== undefined ? ` (${+s.dirtyLimitMBps.toFixed(3)} MB/s per vCPU)` : ""}`,
    "",
    "| mode | converged | rounds | total | downtime | final pages | pages sent | equal | wall |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const m of r.modes) {
    lines.push(
      `| ${m.mode} | ${m.converged ? "yes" : "no"} | ${m.rounds.length} | ${ms(m.totalMs)} | ${ms(m.downtimeMs)} | ${m.finalRoundPages} | ${m.pagesSent} | ${m.equal === null ? "n/a" : m.equal ? "yes" : "NO"} | ${ms(m.wallMs)} |`,
    );
  }
  lines.push("");
  for (const m of r.modes)
    lines.push(`${m.mode}: pages per round ${m.rounds.map((x) => x.pages).join(", ")}; final ${m.finalRoundPages}`);
  return lines.join("\n");
}

const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
const rawText = (s: string, tag: string): string => s.replace(new RegExp(`</(${tag})`, "gi"), "<\\/$1");
const jsonForScript = (v: unknown): string => JSON.stringify(v).replace(/<\//g, "<\\/").replace(/<!--/g, "\\u003c!--");

/** One self-contained page: the table, and a uPlot chart of the dirty set sent per round per mode. */
export async function renderMigrateHtml(r: MigrateCliResult): Promise<string> {
  const jsPath = createRequire(import.meta.url).resolve("uplot/dist/uPlot.iife.min.js");
  const [js, css] = await Promise.all([
    readFile(jsPath, "utf8"),
    readFile(join(dirname(jsPath), "uPlot.min.css"), "utf8"),
  ]);
  const rows = r.modes
    .map(
      (m) =>
        `<tr><td>${esc(m.mode)}</td><td>${m.converged ? "yes" : "no"}</td><td>${m.rounds.length}</td><td>${esc(ms(m.totalMs))}</td>` +
        `<td>${esc(ms(m.downtimeMs))}</td><td>${m.finalRoundPages}</td><td>${m.pagesSent}</td><td>${m.equal === null ? "n/a" : m.equal ? "yes" : "NO"}</td></tr>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dirtlog migrate</title>
<style>${rawText(css, "style")}
body{font:14px system-ui,sans-serif;margin:2em;color:#1d2430}table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:4px 8px;text-align:right}</style>
</head><body>
<h1>dirtlog migrate</h1>
<p>${esc(renderMigrateText(r).split("\n")[0])}</p>
<table><thead><tr><th>mode</th><th>converged</th><th>rounds</th><th>total</th><th>downtime</th><th>final pages</th><th>pages sent</th><th>equal</th></tr></thead><tbody>
${rows}
</tbody></table>
<h2>Dirty set per round (pages sent; the last point is the stop-and-copy)</h2>
<div id="chart" data-chart="rounds"></div>
<script type="application/json" id="result">${jsonForScript(r)}</script>
<script>${rawText(js, "script")}</script>
<script>
(function () {
  var r = JSON.parse(document.getElementById("result").textContent);
  var n = 0;
  r.modes.forEach(function (m) { n = Math.max(n, m.rounds.length + 1); });
  var xs = []; for (var i = 0; i < n; i++) xs.push(i);
  var colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
  var data = [xs], series = [{ label: "round" }];
  r.modes.forEach(function (m, k) {
    var ys = m.rounds.map(function (x) { return x.pages; }).concat([m.finalRoundPages]);
    while (ys.length < n) ys.push(null);
    data.push(ys);
    series.push({ label: m.mode + (m.converged ? "" : " (not converged)"), stroke: colors[k % colors.length], width: 2 });
  });
  new uPlot({ width: 900, height: 360, series: series, scales: { x: { time: false } },
    axes: [{ label: "round" }, { label: "pages", size: 70 }] }, data, document.getElementById("chart"));
})();
</script>
<footer>Generated by dirtlog migrate. Charts: uPlot (MIT).</footer>
</body></html>
`;
}

export async function main(args: string[]): Promise<number> {
  const parsed = parseMigrateArgs(args);
  if (parsed === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const out = parsed.out;
  if (out) {
    try {
      await mkdir(out, { recursive: true });
    } catch (e) {
      usage("out", out, `cannot be used as a directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }
  let result: MigrateCliResult;
  try {
    result = await runMigrate(parsed.settings, (mode, round) =>
      process.stderr.write(
        `dirtlog migrate: ${mode}: round ${round.round}: ${round.pages} pages, ${round.ms.toFixed(0)} ms\n`,
      ),
    );
  } catch (e) {
    const reason = (e as { errno?: string }).errno === "ENOMEM" ? (e as Error).message : undefined;
    if (reason)
      throw new UsageError(
        `the model cannot hold this guest (${reason}); try a smaller guest, fewer vCPUs or smaller rings`,
      );
    throw e;
  }
  if (out) {
    await writeFile(join(out, "report.json"), `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(join(out, "report.html"), await renderMigrateHtml(result));
    process.stderr.write(`dirtlog migrate: wrote ${join(out, "report.json")} and report.html\n`);
  }
  process.stdout.write(parsed.json ? `${JSON.stringify(result, null, 2)}\n` : `${renderMigrateText(result)}\n`);
  for (const m of result.modes)
    if (m.equal === false)
      process.stderr.write(`dirtlog migrate: FAILED: ${m.mode}: destination differs from source\n`);
  return result.ok ? 0 : 1;
}
