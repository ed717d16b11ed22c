// What the CLI's commands share (Node only): the environment a result records (package,
// core, runtime, timer, machine). Option parsing is compare_cli.ts parseOptions.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { cpus } from "node:os";

/** Smallest step of process.hrtime.bigint() seen in back-to-back reads, ns. */
function timerResolutionNs(): number {
  let min = Number.POSITIVE_INFINITY;
  for (let k = 0; k < 2000; k++) {
    const a = process.hrtime.bigint();
    let b = process.hrtime.bigint();
    while (b === a) b = process.hrtime.bigint();
    min = Math.min(min, Number(b - a));
  }
  return min;
}

/**
 * The package, the core actually loaded (its hash), the runtime and the timer; with
 * `machine`, the CPU model, cores and Node version too (compare adds those itself).
 */
export async function cliEnvironment(version: string, machine = false): Promise<Record<string, string | number | boolean>> {
  const debug = process.env.DIRTLOG_CORE === "debug";
  const wasm = new URL(debug ? "../build/dirtlog.debug.wasm" : "../build/dirtlog.wasm", import.meta.url);
  const c = machine ? cpus() : [];
  return {
    ...(machine ? { cpu: c[0]?.model ?? "unknown", cores: c.length, node: process.version } : {}),
    version,
    v8: process.versions.v8,
    platform: `${process.platform} ${process.arch}`,
    timerResolutionNs: timerResolutionNs(),
    core: debug ? "debug (asserts on)" : "release",
    coreWasmSha256: createHash("sha256")
      .update(await readFile(wasm))
      .digest("hex"),
  };
}
