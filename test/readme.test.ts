// The README's examples run verbatim: each ```js block is written to a file inside the
// package (so `import … from "dirtlog"` resolves to this package by self-reference) and
// run by Node. Each example prints its checks; every line printed must be "true".
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const dir = new URL("./artifacts/", import.meta.url);

describe("README examples", () => {
  it("has examples to run", () => {
    expect(blocks.length).toBeGreaterThanOrEqual(2);
  });
  blocks.forEach((code, i) => {
    const first = code.split("\n").find((l) => l.trim() && !l.startsWith("import")) ?? "";
    it(`example ${i + 1} (${first.trim().slice(0, 50)}…) runs and prints only true`, () => {
      mkdirSync(dir, { recursive: true });
      const file = new URL(`readme-${i + 1}.mjs`, dir);
      writeFileSync(file, code);
      const r = spawnSync(process.execPath, [file.pathname], { timeout: 60_000, encoding: "utf8" });
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      const lines = r.stdout.trim().split("\n");
      expect(lines.length).toBeGreaterThan(0);
      expect(lines).toEqual(lines.map(() => "true"));
    });
  });
});
