// The core must be safe to instantiate once per thread over one shared memory: no data
// segments (they would be re-applied on every instantiate), no globals (per-instance, so
// never shared state), no start function, and nothing imported but env.memory.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

interface Section {
  id: number;
  start: number;
  size: number;
}

function leb(bytes: Uint8Array, at: number): [number, number] {
  let v = 0;
  let shift = 0;
  let i = at;
  while (true) {
    const b = bytes[i++];
    v |= (b & 0x7f) << shift;
    shift += 7;
    if (!(b & 0x80)) return [v >>> 0, i];
  }
}

function sections(bytes: Uint8Array): Section[] {
  const out: Section[] = [];
  let i = 8;
  while (i < bytes.length) {
    const id = bytes[i++];
    const [size, at] = leb(bytes, i);
    out.push({ id, start: at, size });
    i = at + size;
  }
  return out;
}

function imports(bytes: Uint8Array, s: Section): string[] {
  const dec = new TextDecoder();
  let [n, i] = leb(bytes, s.start);
  const names: string[] = [];
  while (n--) {
    let len: number;
    [len, i] = leb(bytes, i);
    const mod = dec.decode(bytes.subarray(i, i + len));
    i += len;
    [len, i] = leb(bytes, i);
    const name = dec.decode(bytes.subarray(i, i + len));
    i += len;
    const kind = bytes[i++];
    names.push(`${mod}.${name}:${kind}`);
    if (kind === 2) {
      // memory: limits flags, min, (max)
      const flags = bytes[i++];
      [, i] = leb(bytes, i);
      if (flags & 1) [, i] = leb(bytes, i);
    } else {
      break; // anything else already fails the test
    }
  }
  return names;
}

const SECTION_DATA = 11;
const SECTION_GLOBAL = 6;
const SECTION_START = 8;
const SECTION_IMPORT = 2;
const SECTION_DATACOUNT = 12;

describe("build/dirtlog.wasm", () => {
  const bytes = new Uint8Array(readFileSync(new URL("../build/dirtlog.wasm", import.meta.url)));
  const ids = sections(bytes).map((s) => s.id);

  it("has no data, global or start section", () => {
    expect(ids).not.toContain(SECTION_DATA);
    expect(ids).not.toContain(SECTION_DATACOUNT);
    expect(ids).not.toContain(SECTION_GLOBAL);
    expect(ids).not.toContain(SECTION_START);
  });

  it("imports only env.memory, and it is shared", () => {
    const s = sections(bytes).find((x) => x.id === SECTION_IMPORT);
    expect(s).toBeDefined();
    expect(imports(bytes, s as Section)).toEqual(["env.memory:2"]);
    const mod = new WebAssembly.Module(bytes);
    const imp = WebAssembly.Module.imports(mod);
    expect(imp).toEqual([{ module: "env", name: "memory", kind: "memory" }]);
    // a non-shared memory must not link
    expect(() => new WebAssembly.Instance(mod, { env: { memory: new WebAssembly.Memory({ initial: 17, maximum: 65536 }) } })).toThrow();
  });

  it("the section walker sees a data segment and a global when there is one", () => {
    // (module (global i32 (i32.const 0)) (memory 1) (data (i32.const 0) "x"))
    const probe = new Uint8Array([
      0, 97, 115, 109, 1, 0, 0, 0, 5, 3, 1, 0, 1, 6, 6, 1, 127, 0, 65, 0, 11, 11, 7, 1, 0, 65, 0, 11, 1, 120,
    ]);
    expect(() => new WebAssembly.Module(probe)).not.toThrow();
    const got = sections(probe).map((s) => s.id);
    expect(got).toContain(SECTION_DATA);
    expect(got).toContain(SECTION_GLOBAL);
  });
});

describe("build/dirtlog.debug.wasm (asserts on)", () => {
  const bytes = new Uint8Array(readFileSync(new URL("../build/dirtlog.debug.wasm", import.meta.url)));
  const mod = new WebAssembly.Module(bytes);

  it("imports env.abort for its asserts, next to the shared memory; the release build does not", () => {
    const names = WebAssembly.Module.imports(mod).map((i) => `${i.module}.${i.name}`);
    expect(names.sort()).toEqual(["env.abort", "env.memory"]);
  });

  it("exports what the release build exports", () => {
    const release = new WebAssembly.Module(readFileSync(new URL("../build/dirtlog.wasm", import.meta.url)));
    const names = (m: WebAssembly.Module) => WebAssembly.Module.exports(m).map((e) => e.name).sort();
    expect(names(mod)).toEqual(names(release));
  });

  it("keeps its assert messages in the guard below 64 KiB (re-applied on each instantiate, never changing)", () => {
    const data = sections(bytes).find((s) => s.id === SECTION_DATA);
    expect(data).toBeDefined();
    // every segment is active with an i32.const offset: (flags 0, 0x41 offset, 0x0b)
    let [n, i] = leb(bytes, (data as Section).start);
    expect(n).toBeGreaterThan(0);
    while (n--) {
      expect(bytes[i++]).toBe(0);
      expect(bytes[i++]).toBe(0x41);
      let offset: number;
      [offset, i] = leb(bytes, i);
      expect(bytes[i++]).toBe(0x0b);
      let len: number;
      [len, i] = leb(bytes, i);
      expect(offset + len).toBeLessThanOrEqual(65536);
      i += len;
    }
  });
});
