/**
 * Headless Chromium for the browser tests, driven by puppeteer-core (no browser download: Debian's `chromium`
 * package, which `.ci/run` installs when it is missing). Screenshots go under `.cm2/test-artifacts/` (git-ignored).
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { CM2_DIR } from "../../scripts/paths.ts";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** The Chromium binary (`CM2_CHROMIUM`, or the first of the usual paths), or null when there is none. */
export async function findChromium(): Promise<string | null> {
  const env = Deno.env.get("CM2_CHROMIUM");
  for (const p of env ? [env] : CANDIDATES) {
    try {
      if ((await Deno.stat(p)).isFile) return p;
    } catch {
      // not there
    }
  }
  return null;
}

/**
 * Whether browser tests run here: always in CI (where a missing Chromium fails them, with the install command),
 * elsewhere only when Chromium is installed.
 */
export const browserTestsIgnored = !Deno.env.get("CI") && (await findChromium()) === null;

/** A page of a fresh headless Chromium; every console error and failed request is collected. */
export async function withPage<T>(
  fn: (page: Page, problems: string[]) => Promise<T>,
  opts: { offline?: boolean } = {},
): Promise<T> {
  const exe = await findChromium();
  if (exe === null) {
    throw new Error("Chromium not found: `apt-get install chromium` (or set CM2_CHROMIUM to its binary)");
  }
  const browser: Browser = await puppeteer.launch({
    executablePath: exe,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1366, height: 900 });
    if (opts.offline) await page.setOfflineMode(true);
    const problems: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console error: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e instanceof Error ? e.message : String(e)}`));
    return await fn(page, problems);
  } finally {
    await browser.close();
  }
}

/** Saves a screenshot of the page as a test artifact; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  const dir = path.join(CM2_DIR, "test-artifacts");
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, `${name}.png`) as `${string}.png`;
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** The page's visible text (run in the page; a string, so this file needs no DOM types). */
export async function pageText(page: Page): Promise<string> {
  return await page.evaluate("document.body.innerText") as string;
}

/** Waits until the page's visible text holds `text`. */
export async function waitForText(page: Page, text: string, timeoutMs = 60_000): Promise<void> {
  await page.waitForFunction(`document.body.innerText.includes(${JSON.stringify(text)})`, {
    timeout: timeoutMs,
  });
}
