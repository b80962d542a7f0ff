import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { faultClasses } from "../torture/classes/index.js";

/**
 * The short version of `npm run torture`: every fault class with `quick: true` (a few cases of each
 * kind, the same checks). Zero failures, and every kind a class names was tried, so a class that
 * silently does nothing fails here.
 */
describe("the torture campaign, quick", () => {
  it("lists its classes", () => {
    assert.ok(faultClasses.length >= 4, `only ${faultClasses.length} classes in torture/classes/index.ts`);
  });
  for (const entry of faultClasses) {
    it(`${entry.id}: no failure, and a case of every kind it names`, async (t) => {
      const workDir = await mkdtemp(join(tmpdir(), `torture-quick-${entry.id}-`));
      try {
        const seed = 20261130;
        const result = await entry.run({ seed, budgetMs: 5_000, workDir, quick: true });
        t.diagnostic(`${result.name}: ${JSON.stringify(result.cases)}`);
        assert.deepEqual(result.failures, [], `seed ${seed}`);
        const kinds = Object.entries(result.cases);
        assert.ok(kinds.length > 0, "the class names no kind of case");
        for (const [kind, count] of kinds) assert.ok(count > 0, `no case of kind "${kind}" was tried`);
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    });
  }
});
