// The host mirror (src/layout.ts) must agree with the core's layout (assembly/layout.ts).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import * as host from "../src/layout.js";

function coreConstants(): Map<string, number> {
  const text = readFileSync(new URL("../assembly/layout.ts", import.meta.url), "utf8");
  const out = new Map<string, number>();
  for (const m of text.matchAll(/export const (\w+): \w+ = ([^;]+);/g)) {
    const expr = m[2].replace(/_/g, "");
    if (/^(0x[0-9a-f]+|\d+)$/i.test(expr)) out.set(m[1], Number(expr));
  }
  return out;
}

describe("layout mirror", () => {
  const core = coreConstants();
  it("parses the core layout", () => {
    expect(core.get("VM_TLB_FLUSHES")).toBe(88);
    expect(core.size).toBeGreaterThan(40);
  });
  for (const [name, value] of Object.entries(host)) {
    if (!core.has(name)) continue;
    it(`${name} matches the core`, () => {
      expect(value).toBe(core.get(name));
    });
  }
  it("every host field that mirrors a core field exists in the core", () => {
    const mirrored = Object.keys(host).filter((k) => /^(VM|SLOT|VCPU)_/.test(k) && k !== "SLOT_TABLE_ENTRIES");
    for (const k of mirrored) expect(core.has(k), k).toBe(true);
  });
});
