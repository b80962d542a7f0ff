import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { chromium, type Browser, type Page } from "playwright-core";

import { FileCheckpointManager, Tensor } from "../src/index.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

/**
 * The dashboard in a real browser: Debian's Chromium (apt-get install -y chromium) driven by
 * playwright-core against the built `ckpt serve`. Without Chromium the test fails under CI=true
 * and is skipped, loudly, elsewhere.
 */

const ROOT = join(import.meta.dirname, "..");
const CLI = join(ROOT, "dist", "cli", "main.js");
const CHROMIUM = process.env.CKPT_CHROMIUM ?? "/usr/bin/chromium";
const tempDir = useTempDirs("serve-browser");
/** The README's screenshot is rewritten only when asked (CKPT_UPDATE_SCREENSHOT=1): a test run leaves the tree clean. */
const screenshotPath = async (): Promise<string> => (process.env.CKPT_UPDATE_SCREENSHOT === "1" ? join(ROOT, "docs", "dashboard.png") : join(await tempDir(), "dashboard.png"));

function requireChromium(t: TestContext): boolean {
  if (existsSync(CHROMIUM)) return true;
  const message = `Chromium is not installed at ${CHROMIUM} (apt-get install -y chromium, or set CKPT_CHROMIUM)`;
  if (process.env.CI === "true") throw new Error(`${message}: required under CI`);
  console.warn(`\n*** SKIPPING: ${message} ***\n`);
  t.skip(message);
  return false;
}

async function save(manager: FileCheckpointManager, stepNr: number, loss: number): Promise<void> {
  await manager.beginCheckpoint(stepNr);
  await manager.saveState({
    model: {
      "encoder.weight": Tensor.from(Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i + stepNr)), { shape: [64, 64] }),
      "encoder.bias": Tensor.from(Float32Array.from({ length: 64 }, (_, i) => i / stepNr), { shape: [64] }),
      "head.weight": Tensor.from(Float32Array.from({ length: 640 }, (_, i) => (i % 7) - 3), { shape: [10, 64] }),
    },
    optimizer: { step: stepNr, exp_avg: Tensor.from(new Float32Array(4096).fill(stepNr / 1000), { shape: [64, 64] }) },
  });
  await manager.saveScore(loss, { lowerBetter: true });
  await manager.commitCheckpoint();
}

/** Starts the built `ckpt serve DIR` and reads the URL it prints. */
function startServe(dir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [CLI, "serve", dir, "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString("utf8");
      const url = /http:\/\/127\.0\.0\.1:\d+\//.exec(out)?.[0];
      if (url !== undefined) resolve({ child, url });
    });
    child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString("utf8")));
    child.on("exit", (code) => reject(new Error(`ckpt serve exited with ${code}: ${err}`)));
  });
}

describe("the dashboard in Chromium", () => {
  let dir: string;
  let manager: FileCheckpointManager;
  let serve: { child: ChildProcess; url: string } | undefined;
  let browser: Browser | undefined;
  let page: Page;
  const pageErrors: string[] = [];

  before(async () => {
    dir = await tempDir();
    manager = new FileCheckpointManager({ checkpointDir: dir });
    for (const [step, loss] of [[100, 2.3], [200, 1.6], [300, 1.1], [400, 1.25]] as const) await save(manager, step, loss);
    await manager.deleteCheckpoint(100, { preserveModel: true });
  });

  after(async () => {
    await browser?.close();
    if (serve !== undefined && serve.child.exitCode === null) {
      const exited = new Promise((resolve) => serve!.child.once("exit", resolve));
      serve.child.kill("SIGTERM");
      await exited;
    }
    await manager?.close();
  });

  test("lists the checkpoints, draws the charts, shows new checkpoints live, diffs two steps", async (t) => {
    if (!requireChromium(t)) return;
    serve = await startServe(dir);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("pageerror", (error) => pageErrors.push(error.message));
    page.on("console", (message) => {
      if (message.type() === "error") pageErrors.push(message.text());
    });
    await page.goto(serve.url);

    // The table: every checkpoint, its score as saved with its direction, kind and marks.
    await page.waitForSelector('#checkpoints tr[data-step="400"]');
    assert.deepEqual(await page.locator("#checkpoints tbody tr").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-step"))), ["100", "200", "300", "400"]);
    const row300 = await page.locator('#checkpoints tr[data-step="300"]').innerText();
    assert.match(row300, /1\.1 ↓/);
    assert.match(row300, /resumable/);
    assert.match(row300, /best/);
    assert.match(await page.locator('#checkpoints tr[data-step="100"]').innerText(), /model-only/);
    assert.match(await page.locator('#checkpoints tr[data-step="400"]').innerText(), /last/);

    // The score chart draws a point per checkpoint (hollow for the model-only one) and a line.
    await page.waitForSelector("#score-chart circle.point");
    assert.equal(await page.locator("#score-chart circle.point").count(), 4);
    assert.equal(await page.locator("#score-chart circle.point.model-only").count(), 1);
    assert.equal(await page.locator('#score-chart circle.point.best[data-step="300"]').count(), 1);
    assert.equal(await page.locator("#score-chart polyline.score-line").count(), 1);
    const ys = await page.locator("#score-chart circle.point").evaluateAll((points) => points.map((p) => Number(p.getAttribute("cy"))));
    assert.ok(ys.every((y) => Number.isFinite(y)) && new Set(ys).size === 4, `distinct heights for distinct scores: ${ys}`);
    assert.ok((await page.locator("#disk-chart rect.bar").count()) >= 4);
    await page.waitForSelector("#young-daly");
    assert.match(await page.locator("#young-daly").innerText(), /^\d/);

    // Training writes a checkpoint and retention deletes one: the page follows without a reload.
    await page.evaluate("window.notReloaded = true");
    await save(manager, 500, 0.8);
    await manager.deleteCheckpoint(200);
    await page.waitForSelector('#checkpoints tr[data-step="500"]');
    await page.waitForSelector('#score-chart path.point.deleted[data-step="200"]');
    assert.equal(await page.evaluate("window.notReloaded"), true);
    assert.equal(await page.locator('#checkpoints tr[data-step="200"]').count(), 0);
    assert.match(await page.locator('#checkpoints tr[data-step="500"]').innerText(), /0\.8 ↓.*resumable/s);

    // A diff of two chosen steps, tensor by tensor.
    await page.locator('#checkpoints tr[data-step="300"] .diff-a-button').click();
    await page.locator('#checkpoints tr[data-step="500"] .diff-b-button').click();
    await page.locator("#diff-run").click();
    await page.waitForSelector('#diff-result tr[data-change="values"]');
    const diffText = await page.locator("#diff-result").innerText();
    assert.match(diffText, /model\.pt:\["encoder\.weight"\]\s+float32 \[64, 64\]\s+max \|a−b\|/);
    assert.match(diffText, /rank_0\.pt:optimizer\.exp_avg/);

    // Verify with progress.
    await page.locator("#verify-run").click();
    await page.waitForSelector("#verify-result li.good");
    assert.match(await page.locator("#verify-result").innerText(), /all sound[\s\S]*step_500: sound/);
    assert.equal(await page.evaluate('document.getElementById("verify-progress").value'), 1);

    // A checkpoint's tensors, with statistics on demand.
    await page.locator('#checkpoints tr[data-step="500"] .files-button').click();
    const biasRow = `#details tr[data-key='model["encoder.bias"]']`;
    await page.waitForSelector(biasRow);
    await page.locator(`${biasRow} .stats-button`).click();
    await page.waitForSelector("#details tr.stats");
    assert.match(await page.locator("#details tr.stats").innerText(), /numel 64\s+min 0\s+max 0\.126\s+mean 0\.063/);

    const screenshot = await page.screenshot({ path: await screenshotPath(), fullPage: true });
    assert.ok(screenshot.byteLength > 10_000, "the screenshot shows a page");
    assert.deepEqual(pageErrors, []);
  });
});
