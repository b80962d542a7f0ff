import { byId, formatBytes, formatNumber, formatSeconds, getJson, h, postJson, type CheckpointDetails, type CostAnswer, type DiffAnswer, type DiffChange, type TensorStatsAnswer } from "./api-client.js";

/** The panels below the table: one checkpoint's tensors, verify, diff, save cost, prune. */

/** Shows a checkpoint's files and tensor tree; "stats" on a tensor asks the server for its statistics. */
export async function showDetails(stepNr: number): Promise<void> {
  const target = byId("details");
  byId("details-step").textContent = String(stepNr);
  target.replaceChildren(h("p", { class: "note" }, "reading…"));
  let details: CheckpointDetails;
  try {
    details = await getJson<CheckpointDetails>(`/api/checkpoints/${stepNr}`);
  } catch (error) {
    target.replaceChildren(h("p", { class: "bad" }, (error as Error).message));
    return;
  }
  const files = h("table", { class: "files" }, h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", { class: "num" }, "Bytes"))));
  const fileBody = h("tbody");
  for (const f of details.files) fileBody.append(h("tr", {}, h("td", {}, f.name), h("td", { class: "num" }, formatBytes(f.size))));
  files.append(fileBody);
  const parts: Node[] = [h("p", {}, `${details.name}: ${details.kind}, ${formatBytes(details.size)}`), files];
  for (const file of details.tensorFiles) {
    parts.push(h("h3", {}, file.name));
    if ("error" in file) {
      parts.push(h("p", { class: "bad" }, file.error));
      continue;
    }
    parts.push(h("p", { class: "note" }, `${file.format}, ${file.tensorCount} tensors, ${formatBytes(file.tensorBytes)} of tensor data`));
    const body = h("tbody");
    for (const t of file.tensors) {
      const button = h("button", { type: "button", class: "stats-button" }, "stats");
      const row = h("tr", { "data-key": t.key }, h("td", {}, t.key), h("td", {}, t.dtype), h("td", {}, `[${t.shape.join(", ")}]`), h("td", { class: "num" }, formatBytes(t.bytes)), h("td", {}, button));
      button.addEventListener("click", () => void showStats(stepNr, file.name, t.key, row, button));
      body.append(row);
    }
    for (const v of file.values) body.append(h("tr", {}, h("td", {}, v.key), h("td", { colspan: "4", class: "note" }, v.value)));
    parts.push(h("table", { class: "tree" }, h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "dtype"), h("th", {}, "Shape"), h("th", { class: "num" }, "Bytes"), h("th"))), body));
  }
  target.replaceChildren(...parts);
}

async function showStats(stepNr: number, file: string, key: string, row: HTMLTableRowElement, button: HTMLButtonElement): Promise<void> {
  button.disabled = true;
  const query = new URLSearchParams({ file, key });
  let cell: HTMLTableCellElement;
  try {
    const { stats } = await getJson<TensorStatsAnswer>(`/api/checkpoints/${stepNr}/tensor?${query}`);
    cell = h("td", { colspan: "5" }, `numel ${stats.numel}  min ${formatNumber(stats.min)}  max ${formatNumber(stats.max)}  mean ${formatNumber(stats.mean)}  std ${formatNumber(stats.std)}  nan ${stats.nanCount}  inf ${stats.infCount}`);
  } catch (error) {
    cell = h("td", { colspan: "5", class: "bad" }, (error as Error).message);
  }
  row.after(h("tr", { class: "stats" }, cell));
}

/** Verifies a step or all of them through the event stream of /api/verify, with a progress bar. */
export function runVerify(): void {
  const step = (byId("verify-step") as HTMLSelectElement).value;
  const progress = byId("verify-progress") as HTMLProgressElement;
  const result = byId("verify-result");
  const button = byId("verify-run") as HTMLButtonElement;
  button.disabled = true;
  progress.hidden = false;
  progress.value = 0;
  result.replaceChildren();
  const source = new EventSource(`/api/verify${step === "" ? "" : `?step=${step}`}`);
  const finish = (): void => {
    source.close();
    button.disabled = false;
  };
  source.addEventListener("progress", (event) => {
    const { done, total } = JSON.parse((event as MessageEvent<string>).data) as { done: number; total: number };
    progress.value = total === 0 ? 1 : done / total;
  });
  source.addEventListener("result", (event) => {
    const report = JSON.parse((event as MessageEvent<string>).data) as { sound: boolean; checkpoints: { name: string; status: string; filesChecked: number; problems: { file: string; problem: string }[] }[] };
    progress.value = 1;
    for (const c of report.checkpoints) {
      const item = h("li", { class: c.status === "damaged" ? "bad" : c.status === "sound" ? "good" : "note" }, `${c.name}: ${c.status}${c.status === "sound" ? ` (${c.filesChecked} files)` : ""}`);
      if (c.problems.length > 0) item.append(h("ul", {}, ...c.problems.map((p) => h("li", {}, `${p.file}: ${p.problem}`))));
      result.append(item);
    }
    result.prepend(h("li", { class: report.sound ? "good" : "bad" }, report.sound ? "all sound" : "DAMAGED"));
    finish();
  });
  source.addEventListener("failure", (event) => {
    const { message } = JSON.parse((event as MessageEvent<string>).data) as { message: string };
    result.replaceChildren(h("li", { class: "bad" }, message));
    finish();
  });
  source.onerror = () => {
    if (button.disabled) result.append(h("li", { class: "bad" }, "the connection to the server was lost"));
    finish();
  };
}

function changeText(c: DiffChange): [string, string] {
  switch (c.change) {
    case "only-in-a":
      return ["only in A", c.what];
    case "only-in-b":
      return ["only in B", c.what];
    case "dtype-or-shape":
      return ["changed", `${c.a} → ${c.b}`];
    case "values":
      return ["differs", `${c.dtype} [${c.shape.join(", ")}]  max |a−b| = ${formatNumber(c.maxAbsDiff)}  (${c.differing} of ${c.numel} elements)`];
    case "value":
      return ["differs", `${c.a} → ${c.b}`];
  }
}

/** The difference of the two chosen steps, tensor by tensor. */
export async function runDiff(): Promise<void> {
  const a = (byId("diff-a") as HTMLSelectElement).value;
  const b = (byId("diff-b") as HTMLSelectElement).value;
  const target = byId("diff-result");
  if (a === "" || b === "") return;
  target.replaceChildren(h("p", { class: "note" }, `comparing step ${a} with step ${b}…`));
  try {
    const diff = await getJson<DiffAnswer>(`/api/diff?${new URLSearchParams({ a, b })}`);
    const summary = h("p", { class: diff.identical ? "good" : "" }, diff.identical ? `identical: ${diff.same} entries` : `${diff.totalChanges} differences, ${diff.same} entries equal`);
    if (diff.identical) {
      target.replaceChildren(summary);
      return;
    }
    const body = h("tbody");
    for (const c of diff.changes) {
      const [what, detail] = changeText(c);
      body.append(h("tr", { "data-change": c.change }, h("td", {}, what), h("td", {}, c.key), h("td", {}, detail)));
    }
    const more = diff.totalChanges > diff.changes.length ? h("p", { class: "note" }, `(the first ${diff.changes.length} shown)`) : null;
    target.replaceChildren(summary, h("table", { class: "diff" }, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Key"), h("th", {}, "Change"))), body), ...(more === null ? [] : [more]));
  } catch (error) {
    target.replaceChildren(h("p", { class: "bad" }, (error as Error).message));
  }
}

/** The save cost summary: mean blocked and durable time, the interval in use, and Young/Daly's for the MTBF entered. */
export async function showCosts(): Promise<void> {
  const hours = Number((byId("mtbf-hours") as HTMLInputElement).value);
  const target = byId("cost-summary");
  if (!Number.isFinite(hours) || hours <= 0) {
    target.replaceChildren(h("span", { class: "bad" }, "enter a positive number of hours"));
    return;
  }
  try {
    const cost = await getJson<CostAnswer>(`/api/costs?mtbf=${hours * 3600}`);
    const parts: (Node | string)[] = [
      `A save blocked training for ${formatSeconds(cost.meanBlockedSeconds)} on average and was durable after ${formatSeconds(cost.meanDurableSeconds)}. `,
      "Interval in use: ",
      h("strong", { id: "interval-in-use" }, formatSeconds(cost.intervalInUseSeconds)),
      "; Young/Daly's interval √(2 × cost × MTBF): ",
      h("strong", { id: "young-daly" }, formatSeconds(cost.youngDalySeconds)),
      ".",
    ];
    if (cost.intervalInUseSeconds !== null && cost.youngDalySeconds !== null) {
      const ratio = cost.intervalInUseSeconds / cost.youngDalySeconds;
      if (ratio < 0.5) parts.push(" Checkpoints are more frequent than they need to be for this failure rate.");
      else if (ratio > 2) parts.push(" Checkpoints are rarer than this failure rate calls for: a failure loses more work than it should.");
      else parts.push(" The interval in use is close to it.");
    }
    target.replaceChildren(...parts);
  } catch (error) {
    target.replaceChildren(h("span", { class: "bad" }, (error as Error).message));
  }
}

export async function runPrune(onDone: () => void): Promise<void> {
  const keepLast = Number((byId("prune-keep-last") as HTMLInputElement).value);
  const preserveModel = (byId("prune-preserve-model") as HTMLInputElement).checked;
  const target = byId("prune-result");
  try {
    const result = await postJson<{ deleted: number[]; stripped: number[] }>("/api/prune", { keepLast, preserveModel });
    target.textContent = `deleted: ${result.deleted.join(", ") || "none"}; kept only the model of: ${result.stripped.join(", ") || "none"}`;
  } catch (error) {
    target.textContent = (error as Error).message;
  }
  onDone();
}
