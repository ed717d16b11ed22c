// Negative controls for the core: build a copy of assembly/ with a planted bug (text
// replacements that must each apply exactly once) and hand back the compiled module, for
// createVm({ wasm }). Each build takes a few seconds; results are cached per process.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Plant {
  /** File under assembly/, e.g. "vcpu.ts". */
  file: string;
  from: string;
  to: string;
}

const root = fileURLToPath(new URL("..", import.meta.url));
const cache = new Map<string, WebAssembly.Module>();

/** The core with `plants` applied, built for `target` ("release": no asserts; "debug": asserts on). */
export function plantedCore(plants: Plant[], target: "release" | "debug"): WebAssembly.Module {
  const key = JSON.stringify([plants, target]);
  const hit = cache.get(key);
  if (hit) return hit;
  const dir = mkdtempSync(join(tmpdir(), "dirtlog-planted-"));
  try {
    cpSync(join(root, "assembly"), join(dir, "assembly"), { recursive: true });
    cpSync(join(root, "asconfig.json"), join(dir, "asconfig.json"));
    for (const p of plants) {
      const path = join(dir, "assembly", p.file);
      const text = readFileSync(path, "utf8");
      const n = text.split(p.from).length - 1;
      if (n !== 1) throw new Error(`plant in ${p.file}: expected 1 match of ${JSON.stringify(p.from)}, found ${n}`);
      writeFileSync(path, text.replace(p.from, p.to));
    }
    const asc = join(root, "node_modules/assemblyscript/bin/asc.js");
    const out = join(dir, "planted.wasm");
    execFileSync(process.execPath, [asc, "assembly/index.ts", "--target", target, "--optimizeLevel", "0", "--outFile", out], {
      cwd: dir,
      stdio: "pipe",
    });
    const module = new WebAssembly.Module(readFileSync(out));
    cache.set(key, module);
    return module;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The same core, unchanged, built the same way (the control for a planted build). */
export function unplantedCore(target: "release" | "debug"): WebAssembly.Module {
  return plantedCore([], target);
}
