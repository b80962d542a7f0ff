import { byId, formatBytes, formatSeconds, getJson, h, scoreText, type CheckpointRow, type CheckpointsAnswer, type DiskAnswer } from "./api-client.js";
import { drawDiskChart, drawScoreChart } from "./charts.js";
import { runDiff, runPrune, runVerify, showCosts, showDetails } from "./panels.js";

/** The dashboard: loads everything from /api/, and again whenever /api/events says the directory changed. */

let shownSteps = new Set<string>();
let refreshing: Promise<void> | undefined;
let again = false;

function markText(row: CheckpointRow): Node[] {
  const marks: Node[] = [];
  if (row.isLast) marks.push(h("span", { class: "mark" }, "last"));
  if (row.isBest) marks.push(h("span", { class: "mark" }, "best"));
  return marks;
}

function renderTable(answer: CheckpointsAnswer): void {
  const body = byId("checkpoints").querySelector("tbody")!;
  const next = new Set<string>();
  const rows = answer.checkpoints.map((c) => {
    const id = `${c.name}`;
    next.add(id);
    const files = h("button", { type: "button", class: "files-button" }, "files");
    files.addEventListener("click", () => void showDetails(c.stepNr));
    const committed = c.status === "committed" || c.status === "damaged";
    const status = c.status === "unfinished" ? "unfinished (.tmp)" : c.status;
    const tr = h(
      "tr",
      { "data-step": String(c.stepNr), "data-status": c.status, class: shownSteps.size > 0 && !shownSteps.has(id) ? "fresh" : undefined, title: c.problem ?? c.warning ?? undefined },
      h("td", { class: "num" }, c.stepNr),
      h("td", { class: "num" }, scoreText(c)),
      h("td", { class: "num" }, formatBytes(c.size)),
      h("td", {}, c.kind ?? "-"),
      h("td", { class: `status-${c.status}` }, status),
      h("td", {}, ...markText(c)),
      h("td", { class: "num" }, c.save === null ? "-" : formatSeconds(c.save.blockedMs / 1000)),
      h("td", { class: "num" }, c.save === null ? "-" : `${formatSeconds(c.save.durableMs / 1000)} (${formatBytes(c.save.bytesWritten)})`),
      h("td", {}, committed ? compareButtons(c.stepNr) : ""),
      h("td", {}, committed ? files : ""),
    );
    return tr;
  });
  body.replaceChildren(...rows);
  shownSteps = next;
  const committed = answer.checkpoints.filter((c) => c.status === "committed");
  const modelOnly = committed.filter((c) => c.kind === "model-only").length;
  byId("summary").textContent = `${committed.length} committed (${committed.length - modelOnly} resumable, ${modelOnly} model-only); last: ${answer.lastStepNr ?? "none"}, best: ${answer.bestStepNr ?? "none"}`;
}

/** "A" and "B" on a row choose the two steps of the diff. */
function compareButtons(stepNr: number): Node {
  const button = (side: "a" | "b"): HTMLButtonElement => {
    const b = h("button", { type: "button", class: `diff-${side}-button` }, side.toUpperCase());
    b.addEventListener("click", () => {
      (byId(`diff-${side}`) as HTMLSelectElement).value = String(stepNr);
    });
    return b;
  };
  return h("span", {}, button("a"), " ", button("b"));
}

/** Keeps the step choices of verify and diff in line with the checkpoints, keeping what was chosen. */
function renderChoices(answer: CheckpointsAnswer): void {
  const steps = answer.checkpoints.filter((c) => c.status === "committed" || c.status === "damaged").map((c) => c.stepNr);
  for (const [id, first] of [["verify-step", "all checkpoints"], ["diff-a", undefined], ["diff-b", undefined]] as const) {
    const select = byId(id) as HTMLSelectElement;
    const chosen = select.value;
    const options = steps.map((s) => h("option", { value: String(s) }, `step ${s}`));
    select.replaceChildren(...(first === undefined ? [] : [h("option", { value: "" }, first)]), ...options);
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }
  const [a, b] = [byId("diff-a") as HTMLSelectElement, byId("diff-b") as HTMLSelectElement];
  if (a.value === b.value && steps.length > 1) {
    a.value = String(steps.at(-2));
    b.value = String(steps.at(-1));
  }
}

async function refreshOnce(): Promise<void> {
  const [answer, disk] = await Promise.all([getJson<CheckpointsAnswer>("/api/checkpoints"), getJson<DiskAnswer>("/api/disk")]);
  byId("directory").textContent = answer.checkpointDir;
  renderTable(answer);
  renderChoices(answer);
  drawScoreChart(byId<SVGElement>("score-chart"), answer.history, answer.bestStepNr);
  drawDiskChart(byId<SVGElement>("disk-chart"), disk);
  byId("disk-total").textContent = `total ${formatBytes(disk.total)}${disk.leftovers > 0 ? `, ${formatBytes(disk.leftovers)} in unfinished saves` : ""}`;
  byId("prune").hidden = !answer.allowPrune;
  await showCosts();
  document.body.dataset.version = String(answer.version);
}

/** One refresh at a time; a change during one runs another after it. */
function refresh(): void {
  if (refreshing !== undefined) {
    again = true;
    return;
  }
  refreshing = refreshOnce()
    .catch((error: unknown) => {
      byId("summary").textContent = `cannot read the directory: ${(error as Error).message}`;
    })
    .finally(() => {
      refreshing = undefined;
      if (again) {
        again = false;
        refresh();
      }
    });
}

function listen(): void {
  const live = byId("live");
  const events = new EventSource("/api/events");
  events.addEventListener("hello", () => {
    live.textContent = "live";
    live.classList.add("on");
    refresh(); // after a reconnect, what was missed
  });
  events.addEventListener("changed", () => refresh());
  events.onerror = () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  };
}

byId("verify-run").addEventListener("click", runVerify);
byId("diff-run").addEventListener("click", () => void runDiff());
byId("mtbf-hours").addEventListener("change", () => void showCosts());
byId("prune-run").addEventListener("click", () => void runPrune(refresh));
listen();
