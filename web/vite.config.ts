// The UI is built into dist/, which the `hangar` binary embeds and serves at `/`.
// `npm run dev` proxies the API to a local `hangar serve` (HANGAR_SERVER, default :7070).
/// <reference types="vitest/config" />
import { defineConfig } from "vite";

const server = process.env.HANGAR_SERVER ?? "http://127.0.0.1:7070";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: {
    proxy: {
      "/api": { target: server, ws: true },
      "/healthz": server,
    },
  },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
