// `dirtlog sweep`: compare over a grid (guest size × dirty rate × vCPUs), each cell in short
// form. Options are validated with compare's own parser (every value of every list, the
// combinations too), and every VM of the grid is created once before anything runs, so a
// size the model cannot hold is refused up front. Progress with an ETA on stderr; stdout
// gets the markdown tables, or with --json exactly one JSON document; --out DIR keeps each
// finished cell in DIR/cells/ (a rerun with the same options skips them) and writes
// sweep.json, sweep.md and a self-contained sweep.html (the map).
// Exit status: 0; 1 if a cell's correctness check failed (or a cell could not run); 2 for
// bad usage.
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import cliProgress from "cli-progress";
import { cliEnvironment } from "./cli_common.js";
import { loadCosts, parseCompareArgs, UsageError, parseOptions } from "./compare_cli.js";
import type { CompareScenario } from "./compare_types.js";
import { parseLogMode } from "./log_mode.js";
import {
  type CellStore,
  type SweepEvent,
  type SweepSpec,
  checkGridFits,
  compactSize,
  largestThatFits,
  renderMarkdown,
  runSweep,
  winnerText,
} from "./sweep.js";
import { renderSweepHtml } from "./sweep_report.js";

export const DEFAULTS = {
  memory: "1GiB,4GiB,16GiB,64GiB,256GiB",
  "dirty-rate": "1k,10k,100k,1M",
  vcpus: "2",
  ring: "4096,65536",
  workload: "uniform",
  duration: "1s",
  interval: "250ms",
  seed: "1",
};

export const HELP = `usage: dirtlog sweep [options]

dirtlog compare over a grid: guest size × dirty rate (× vCPUs), each cell bitmap against
each ring size on the same workload, in short form. Per cell and metric: the winning mode
and how many times better it is than the best mode of the other kind, measured (this
library) and projected (the kernel's costs for the same events). Lists are comma-separated.
A cell takes about (--duration + 0.15 s) per mode: the defaults, 20 cells of 3 modes, ~70 s.

options (defaults in brackets):
  --memory LIST        guest sizes, e.g. 1GiB,4GiB,16GiB [${DEFAULTS.memory}]
                       unbacked (tracking only) up to about 512GiB with a few vCPUs,
                       --backed up to 3GiB: every VM of the grid is created before the
                       sweep starts and a size the model cannot hold is refused
  --dirty-rate LIST    guest writes per second per vCPU: pages/s (1k, 1.5M), bytes/s
                       (800MB/s: / 4 KiB), or max [${DEFAULTS["dirty-rate"]}]
  --vcpus LIST         vCPU threads, each 1..64 [${DEFAULTS.vcpus}]
  --ring LIST          ring sizes (entries per vCPU, a power of two, 256..65536): the modes
                       of every cell are bitmap and ring:N for each [${DEFAULTS.ring}]
  --modes LIST         instead of --ring, the modes of every cell as in dirtlog compare:
                       bitmap, manual[:CHUNK], ring[:ENTRIES], each with optional +pml; at
                       least two [bitmap + the --ring sizes]
  --workload W         sequential | uniform | hot-set[:HOT%[:WRITES%]] | zipf[:S] |
                       strided[:PAGES] [${DEFAULTS.workload}]
  --duration T         run time per mode per cell, e.g. 1s, 500ms [${DEFAULTS.duration}]
  --interval T         the collector's harvest period (ring modes also reap at every
                       ring-full exit), at most the --duration [${DEFAULTS.interval}]
  --seed N             workload RNG seed, a positive integer [${DEFAULTS.seed}]
  --costs FILE         the kernel's per-operation costs as JSON (as dirtlog compare --costs)
                       [measured on this kind of machine: shared/anchors/real-kvm.md]
  --backed             give each guest real bytes and check a pre-copy migration (slower;
                       sizes up to 3GiB) [off: tracking only]
  --json               print sweep.json's document on stdout instead of the tables
  --out DIR            write DIR/sweep.json, DIR/sweep.md and the map DIR/sweep.html, and
                       keep each finished cell in DIR/cells/<key>.json: a rerun with the
                       same options skips those cells [none: nothing written or resumed]
  -h, --help           this text

A cell's key is made from its guest size, dirty rate, vCPUs, the modes, workload, duration,
interval, seed, --backed and the cost table: change any and the cell runs again. Delete a
cell's file to run it again. The markdown tables and the map lead with the harvest latency
(median, measured) and the kernel's harvest time per call (projected). Exit status: 0; 1 if
a cell's correctness check failed or a cell could not run (named on stderr); 2 for bad
usage.`;

function usage(option: string, value: string, accepted: string): never {
  throw new UsageError(`--${option} ${JSON.stringify(value)}: ${accepted}`);
}

/** The items of a comma list; an empty item is bad usage. */
function list(option: string, text: string, example: string): string[] {
  const items = text.split(",").map((s) => s.trim());
  if (items.some((s) => s === "")) usage(option, text, `a comma-separated list, e.g. ${example}`);
  return items;
}

/** Compare's parser on one value: its UsageError names the option and the offending value. */
function viaCompare(args: string[]): CompareScenario {
  const parsed = parseCompareArgs(args);
  if (parsed === "help") throw new Error("unreachable");
  return parsed.scenario;
}

function unique<T>(option: string, text: string, values: T[]): T[] {
  if (new Set(values).size !== values.length) usage(option, text, "each value once");
  return values;
}

export interface SweepArgs {
  spec: SweepSpec;
  json: boolean;
  out?: string;
  costsFile?: string;
  /** The --memory and --vcpus lists as given (for messages). */
  text: { memory: string; vcpus: string };
}

export function parseSweepArgs(argv: string[]): SweepArgs | "help" {
  const values = parseOptions(argv, {
    memory: { type: "string" },
    "dirty-rate": { type: "string" },
    vcpus: { type: "string" },
    ring: { type: "string" },
    modes: { type: "string" },
    workload: { type: "string" },
    duration: { type: "string" },
    interval: { type: "string" },
    seed: { type: "string" },
    costs: { type: "string" },
    backed: { type: "boolean" },
    json: { type: "boolean" },
    out: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return "help";
  const get = (k: keyof typeof DEFAULTS) => (values[k] as string | undefined) ?? DEFAULTS[k];
  const backed = values.backed === true ? ["--backed"] : [];

  const memoryText = get("memory");
  const memoryBytes = unique(
    "memory",
    memoryText,
    list("memory", memoryText, "1GiB,4GiB").map(
      (m) => viaCompare(["--memory", m, "--vcpus", "1", ...backed]).memoryBytes,
    ),
  );
  const rateText = get("dirty-rate");
  const dirtyRatesPagesPerSec = unique(
    "dirty-rate",
    rateText,
    list("dirty-rate", rateText, "1k,10k,100k").map((r) => viaCompare(["--dirty-rate", r]).dirtyRatePagesPerSec),
  );
  const vcpusText = get("vcpus");
  const vcpus = unique(
    "vcpus",
    vcpusText,
    list("vcpus", vcpusText, "1,2,4").map((v) => viaCompare(["--vcpus", v, "--memory", "1MiB"]).vcpus),
  );
  // every guest size has a page for each vCPU
  const most = String(Math.max(...vcpus));
  for (const m of list("memory", memoryText, "")) viaCompare(["--memory", m, "--vcpus", most, ...backed]);

  let modes: string[];
  if (values.modes !== undefined) {
    if (values.ring !== undefined) usage("ring", values.ring as string, "give --ring or --modes, not both");
    modes = viaCompare(["--modes", values.modes as string]).modes;
    if (modes.length < 2)
      usage("modes", values.modes as string, "at least two modes to compare, e.g. bitmap,ring:4096");
  } else {
    const ringText = get("ring");
    const rings = list("ring", ringText, "4096,65536").map((n): string => {
      if (!/^\d+$/.test(n)) usage("ring", ringText, `${JSON.stringify(n)}: a whole number of entries, e.g. 4096`);
      let name = "";
      try {
        name = parseLogMode(`ring:${n}`).name;
      } catch (e) {
        usage("ring", ringText, `${JSON.stringify(n)}: ${(e as { reason?: string }).reason ?? (e as Error).message}`);
      }
      return name;
    });
    modes = ["bitmap", ...unique("ring", ringText, rings)];
  }

  // the shared options, with compare's rules (workload forms, duration and interval, seed)
  const shared = viaCompare([
    "--workload",
    get("workload"),
    "--duration",
    get("duration"),
    "--interval",
    get("interval"),
    "--seed",
    get("seed"),
  ]);
  if (values.out !== undefined && (values.out as string).trim() === "") usage("out", "", "a directory");
  if (values.costs !== undefined && (values.costs as string).trim() === "") usage("costs", "", "a JSON file");
  const { memoryBytes: _m, dirtyRatePagesPerSec: _d, vcpus: _v, modes: _modes, ...base } = shared;
  return {
    spec: { memoryBytes, dirtyRatesPagesPerSec, vcpus, modes, base: { ...base, backed: backed.length > 0 } },
    json: values.json === true,
    out: values.out as string | undefined,
    costsFile: values.costs as string | undefined,
    text: { memory: memoryText, vcpus: vcpusText },
  };
}

/**
 * Refuse a grid with a VM the model cannot hold (before any cell runs): the guest size is
 * blamed unless the vCPUs' rings are what does not fit.
 */
async function checkFits(spec: SweepSpec, memoryText: string, vcpusText: string): Promise<void> {
  const problems = await checkGridFits(spec);
  if (problems.length === 0) return;
  const p = problems[0];
  const memory = list("memory", memoryText, "").find((m) => viaCompare(["--memory", m]).memoryBytes === p.memoryBytes);
  const setting = `${compactSize(p.memoryBytes)}, ${p.vcpus} vCPU${p.vcpus === 1 ? "" : "s"}, ${p.mode}`;
  if (/KVM_CREATE_VCPU/.test(p.message)) {
    const most = await largestThatFits(spec, p, "vcpus");
    usage(
      "vcpus",
      vcpusText,
      `${setting}: the vCPUs' rings do not fit the model's VM memory; at most ${most} vCPUs at ${compactSize(p.memoryBytes)} with these modes (${p.message})`,
    );
  }
  const most = await largestThatFits(spec, p, "memory");
  usage(
    "memory",
    memory ?? memoryText,
    `${setting}: the model's VM cannot hold this guest; at most ${most}GiB with ${p.vcpus} vCPU${p.vcpus === 1 ? "" : "s"} and these modes${spec.base.backed ? " (--backed)" : ""} (${p.message})`,
  );
}


/** DIR/cells/<key>.json, each written whole (a temporary file renamed) as its cell finishes. */
function fileStore(dir: string): CellStore {
  const cells = join(dir, "cells");
  const path = (key: string) => join(cells, `${key}.json`);
  return {
    async load(key) {
      let text: string;
      try {
        text = await readFile(path(key), "utf8");
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw e;
      }
      return JSON.parse(text);
    },
    async save(key, cell) {
      await mkdir(cells, { recursive: true });
      const { resumed: _r, ...stored } = cell;
      const tmp = `${path(key)}.${process.pid}.tmp`;
      await writeFile(tmp, `${JSON.stringify(stored, null, 2)}\n`);
      await rename(tmp, path(key));
    },
    where: path,
  };
}

const seconds = (ms: number) =>
  ms >= 3_600_000
    ? `${Math.floor(ms / 3_600_000)} h ${Math.round((ms % 3_600_000) / 60_000)} min`
    : ms >= 60_000
      ? `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
      : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

/** Progress on stderr: a bar on a TTY, else one line per cell. */
function progress(out: string | undefined): { onEvent(e: SweepEvent): void; stop(): void } {
  const say = (line: string) => process.stderr.write(`dirtlog sweep: ${line}\n`);
  const tty = process.stderr.isTTY === true;
  const bars = tty
    ? new cliProgress.MultiBar(
        {
          format: " sweep |{bar}| {value}/{total} cells | ETA {left} | {label}",
          hideCursor: true,
          clearOnComplete: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  let bar: cliProgress.SingleBar | undefined;
  let cellStart = 0;
  let cellEta = 0;
  let lastTick = 0;
  const log = (line: string) => {
    if (!bars) return say(line);
    bars.log(`dirtlog sweep: ${line}\n`);
    bars.update(); // draw now: the log is written at the next redraw
  };
  return {
    onEvent(e) {
      if (e.kind === "plan") {
        for (const s of e.stale) log(`ignoring ${s}: not a finished cell of these options; running it again`);
        const where = out ? join(out, "cells") : "";
        if (e.resumed > 0) {
          log(
            `resuming from ${where}: ${e.resumed} of ${e.total} cells already there (skipped), ${e.toRun} to run` +
              (e.toRun ? `, about ${seconds(e.estimateMs)}` : ""),
          );
        } else {
          log(
            `${e.total} cell${e.total === 1 ? "" : "s"} to run, about ${seconds(e.estimateMs)}${out ? ` (each kept in ${where} as it finishes)` : ""}`,
          );
        }
        if (bars && e.toRun > 0) bar = bars.create(e.toRun, 0, { left: seconds(e.estimateMs), label: "" });
      } else if (e.kind === "start") {
        cellStart = performance.now();
        cellEta = e.etaMs;
        bar?.update({ label: e.label, left: seconds(e.etaMs) });
      } else if (e.kind === "mode") {
        const now = performance.now();
        if (bar && now - lastTick > 200) {
          lastTick = now;
          const p = e.progress;
          bar.update({
            label: `${e.label}: ${p.mode} ${p.phase}`,
            left: seconds(Math.max(0, cellEta - (now - cellStart))),
          });
        }
      } else if (e.kind === "done") {
        const c = e.cell;
        const what =
          c.error !== undefined
            ? `FAILED to run: ${c.error}`
            : `harvest latency ${winnerText(c, "harvest latency (median)")}`;
        const eta = e.position < e.toRun ? `; ETA ${seconds(e.etaMs)}` : "";
        log(
          `[${e.position}/${e.toRun}] ${e.label}: ${seconds(c.wallMs)}, ${what}${c.ok ? "" : " (correctness FAILED)"}${eta}`,
        );
        bar?.update(e.position, { left: seconds(e.etaMs), label: "" });
      }
    },
    stop() {
      bars?.stop();
    },
  };
}

export async function main(args: string[]): Promise<number> {
  const parsed = parseSweepArgs(args);
  if (parsed === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const costs = await loadCosts(parsed.costsFile);
  await checkFits(parsed.spec, parsed.text.memory, parsed.text.vcpus);
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  const out = parsed.out;
  if (out) {
    try {
      await mkdir(join(out, "cells"), { recursive: true });
    } catch (e) {
      usage("out", out, `cannot be used as a directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }
  const p = progress(out);
  let result: Awaited<ReturnType<typeof runSweep>>;
  try {
    result = await runSweep(parsed.spec, {
      costs,
      environment: await cliEnvironment(pkg.version, true),
      store: out ? fileStore(out) : undefined,
      onEvent: p.onEvent,
    });
  } finally {
    p.stop();
  }
  const md = renderMarkdown(result);
  if (out) {
    await writeFile(join(out, "sweep.json"), `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(join(out, "sweep.md"), md);
    await writeFile(join(out, "sweep.html"), renderSweepHtml(result));
    process.stderr.write(`dirtlog sweep: wrote ${join(out, "sweep.json")}, sweep.md and sweep.html\n`);
  }
  for (const f of result.failed) {
    process.stderr.write(
      `dirtlog sweep: FAILED: ${f.label}: ${f.error ?? `correctness check failed in ${f.modes.join(", ")}`}\n`,
    );
  }
  process.stdout.write(parsed.json ? `${JSON.stringify(result, null, 2)}\n` : md);
  return result.ok ? 0 : 1;
}
