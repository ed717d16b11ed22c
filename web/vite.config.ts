// The demo page (`npm run demo`, `npm run demo:build`): ring against bitmap, live, in Web
// Workers. Shared WebAssembly memory needs a cross-origin isolated page, so the dev server
// and `vite preview` send the two headers; any static server that serves web/dist must too.
import { fileURLToPath } from "node:url";
import { type Plugin, defineConfig } from "vite";

/** The headers that make the page cross-origin isolated (SharedArrayBuffer, shared WebAssembly memory). */
export const crossOriginIsolation = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

const here = fileURLToPath(new URL(".", import.meta.url));
const repo = fileURLToPath(new URL("..", import.meta.url));
const dist = fileURLToPath(new URL("../dist/", import.meta.url));

/**
 * The package loads node: modules only when it runs under Node (`await import("node:…")`
 * behind a check: the core file, worker_threads); a page never loads them. Resolve them to
 * an empty module rather than Vite's "externalized for browser compatibility" stub and warning.
 */
function nodeOnly(): Plugin {
  const prefix = "\0dirtlog-node-only:";
  return {
    name: "dirtlog:node-only",
    enforce: "pre",
    resolveId(id, importer) {
      return id.startsWith("node:") && importer?.startsWith(dist) ? prefix + id : null;
    },
    load(id) {
      return id.startsWith(prefix) ? "export default {};" : null;
    },
  };
}

export default defineConfig({
  root: here,
  // relative URLs: the built site works from any directory of any static server
  base: "./",
  publicDir: false,
  plugins: [nodeOnly()],
  clearScreen: false,
  server: {
    headers: crossOriginIsolation,
    // the page imports the built package from ../dist (and its core from ../build)
    fs: { allow: [repo] },
  },
  preview: { headers: crossOriginIsolation },
  // the collector worker starts the vCPU workers itself (nested module workers)
  worker: { format: "es", plugins: () => [nodeOnly()] },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // the core (build/dirtlog.wasm) stays a file: compileStreaming needs application/wasm
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1024,
  },
});
