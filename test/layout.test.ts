// One source of truth for the memory layout: src/layout.ts is generated from
// assembly/layout.ts at build time (scripts/gen-layout.mjs). The check fails when the
// mirror in the tree is stale; a few fields pin the generator against known offsets.
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import * as host from "../src/layout.js";

describe("layout mirror (generated)", () => {
  it("src/layout.ts is what the generator makes from assembly/layout.ts", () => {
    const script = new URL("../scripts/gen-layout.mjs", import.meta.url).pathname;
    expect(() => execFileSync(process.execPath, [script, "--check"], { stdio: "pipe" })).not.toThrow();
  });
  it("carries the core's values, u64 and hex constants included", () => {
    expect(host.VM_TLB_FLUSHES).toBe(88);
    expect(host.VCPU_SIZE).toBe(640);
    expect(host.KVM_MAX_GFN).toBe(0xf_ffff_ffff);
    expect(host.KVM_REQ_EXIT).toBe(31);
    expect(host.VCPU_MUTEX % 4).toBe(0);
    expect(host.VCPU_MUTEX + 4).toBeLessThanOrEqual(host.VCPU_SIZE);
  });
});
