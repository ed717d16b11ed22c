#!/usr/bin/env node
// dirtlog's command line (`npm start`, or `dirtlog` when installed). Its main job:
//   dirtlog compare [options]   ring against bitmap on one workload, measured in one run,
//                               with progress, a table, a verdict and a kernel projection
// Progress goes to stderr; the table (or, with --json, exactly one JSON document) to
// stdout. Exit status: 0, 1 when a correctness check failed, 2 for bad usage.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { cliEnvironment } from "./cli_common.js";
import { join } from "node:path";
import cliProgress from "cli-progress";
import { compare, fitsInOneVm } from "./compare.js";
import { renderReportHtml } from "./report_html.js";
import { RATIONALE, HELP, UsageError, loadCosts, parseCompareArgs, renderText } from "./compare_cli.js";

/**
 * The other commands, each in its own module exporting `main(args): Promise<number>` (exit
 * status) and throwing UsageError for bad usage (exit 2).
 */
const COMMANDS: Record<string, () => Promise<{ main(args: string[]): Promise<number> }>> = {
  sweep: () => import("./sweep_cli.js"),
  dirtyrate: () => import("./dirtyrate_cli.js"),
  migrate: () => import("./migrate_cli.js"),
};
let commandName = "compare";

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== undefined && command in COMMANDS) {
    commandName = command;
    return (await COMMANDS[command]()).main(rest);
  }
  const args = command === "compare" ? rest : argv;
  if (command !== undefined && command !== "compare" && !command.startsWith("-")) {
    throw new UsageError(`unknown command ${JSON.stringify(command)}: the commands are compare, ${Object.keys(COMMANDS).join(", ")}`);
  }
  const parsed = parseCompareArgs(args);
  if (parsed === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  // a guest the model cannot hold is bad usage (exit 2, one line), not a crash mid-run
  const misfit = await fitsInOneVm(parsed.scenario);
  if (misfit !== undefined) {
    const gib = parsed.scenario.memoryBytes / 2 ** 30;
    throw new UsageError(
      `--memory ${gib >= 1 ? `${+gib.toFixed(2)}GiB` : `${parsed.scenario.memoryBytes}B`} with --vcpus ${parsed.scenario.vcpus}: the model cannot hold this guest (${misfit}); try a smaller guest, fewer vCPUs or smaller rings`,
    );
  }
  const costs = await loadCosts(parsed.costsFile);
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  const tty = process.stderr.isTTY === true;
  const bars = tty
    ? new cliProgress.MultiBar(
        { format: " {mode} |{bar}| {percentage}% {phase}", hideCursor: true, clearOnComplete: false },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  const bar = new Map<string, cliProgress.SingleBar>();
  let lastPhase = "";
  const result = await compare(parsed.scenario, {
    costs,
    environment: await cliEnvironment(pkg.version),
    rationale: parsed.defaults ? RATIONALE : undefined,
    onProgress: (p) => {
      if (bars) {
        let b = bar.get(p.mode);
        if (!b) {
          b = bars.create(100, 0, { mode: p.mode.padEnd(18), phase: p.phase });
          bar.set(p.mode, b);
        }
        b.update(Math.round((p.phase === "setup" ? 0 : p.fraction) * 100), { phase: p.phase });
      } else if (`${p.mode}:${p.phase}` !== lastPhase) {
        lastPhase = `${p.mode}:${p.phase}`;
        process.stderr.write(`dirtlog compare: [${p.index + 1}/${p.of}] ${p.mode}: ${p.message ?? p.phase}\n`);
      }
    },
  });
  bars?.stop();
  if (parsed.out) {
    await mkdir(parsed.out, { recursive: true });
    await writeFile(join(parsed.out, "report.json"), `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(join(parsed.out, "report.html"), await renderReportHtml(result));
    process.stderr.write(`dirtlog compare: wrote ${join(parsed.out, "report.json")} and report.html\n`);
  }
  process.stdout.write(parsed.json ? `${JSON.stringify(result, null, 2)}\n` : `${renderText(result)}\n`);
  return result.ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    if (e instanceof UsageError) {
      process.stderr.write(`dirtlog ${commandName}: ${e.message}\nsee: dirtlog ${commandName} --help\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`dirtlog ${commandName}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);
