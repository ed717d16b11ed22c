// capabilities(): what the engine offers, checked synchronously, with the fix for each
// problem in words; createVm() fails at once with those words (ENXIO) instead of later with
// a raw DataCloneError. Node has everything; the browser's failures are simulated here by
// hiding what a page without cross-origin isolation or with a strict CSP would lack (the
// demo page's end-to-end test shows the real thing in Chromium).
import { afterEach, describe, expect, it } from "vitest";
import { KvmError, capabilities, createVm } from "../src/index.js";

const g = globalThis as Record<string, unknown>;
const saved = { SharedArrayBuffer: g.SharedArrayBuffer, Module: WebAssembly.Module };
afterEach(() => {
  g.SharedArrayBuffer = saved.SharedArrayBuffer;
  (WebAssembly as { Module: unknown }).Module = saved.Module;
});

describe("capabilities()", () => {
  it("Node offers everything", () => {
    const c = capabilities();
    expect(c).toEqual({
      ok: true,
      webAssembly: true,
      sharedMemory: true,
      sharedArrayBuffer: true,
      crossOriginIsolated: true,
      atomics: true,
      workers: true,
      bigint: true,
      problems: [],
    });
  });

  it("without SharedArrayBuffer: not ok, says so, and createVm fails at once with ENXIO", async () => {
    g.SharedArrayBuffer = undefined;
    const c = capabilities();
    expect(c.ok).toBe(false);
    expect(c.sharedArrayBuffer).toBe(false);
    expect(c.sharedMemory).toBe(false);
    expect(c.problems.join(" ")).toMatch(/SharedArrayBuffer/);
    await expect(createVm()).rejects.toMatchObject({ errno: "ENXIO", call: "KVM_CREATE_VM" });
    await expect(createVm()).rejects.toBeInstanceOf(KvmError);
  });

  it("a CSP that forbids WebAssembly compilation: names 'wasm-unsafe-eval'", async () => {
    (WebAssembly as { Module: unknown }).Module = function Module() {
      throw new Error("WebAssembly.Module(): Refused to compile or instantiate WebAssembly module");
    };
    const c = capabilities();
    expect(c.ok).toBe(false);
    expect(c.webAssembly).toBe(false);
    expect(c.problems.join(" ")).toMatch(/script-src 'wasm-unsafe-eval'/);
    await expect(createVm()).rejects.toThrow(/ENXIO: .*wasm-unsafe-eval/);
  });
});
