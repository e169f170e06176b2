/**
 * The viewer's static assets, read from the pinned npm packages (never a CDN: the pages work offline). uPlot is
 * imported for its side-effect-free module so the package is installed with the rest; its browser build is served.
 *
 * @module
 */
import "uplot";
import { createRequire } from "node:module";
import * as fs from "node:fs/promises";

const require = createRequire(import.meta.url);

let cache: { js: string; css: string } | null = null;

/** uPlot's browser build (IIFE, defines `uPlot`) and its stylesheet. */
export async function uplotAssets(): Promise<{ js: string; css: string }> {
  if (cache) return cache;
  const [js, css] = await Promise.all([
    fs.readFile(require.resolve("uplot/dist/uPlot.iife.min.js"), "utf8"),
    fs.readFile(require.resolve("uplot/dist/uPlot.min.css"), "utf8"),
  ]);
  cache = { js, css };
  return cache;
}
