import type { Gang, JsonValue } from "../gang/gang.js";

/** What each rank tells the others at the end of a manager operation. */
interface Report {
  op: string;
  stepNr: number | null;
  error: string | null;
  data: JsonValue;
}

export class CollectiveError extends Error {}

/**
 * Errors `agree` raised: it raises on every rank or on none, so when one comes out of a nested
 * `agree`, every rank has it at the same point and the enclosing `agree` rethrows it without
 * another round (a rank in a one-round operation would not be there to answer it).
 */
const raisedOnEveryRank = new WeakSet<object>();

function raise(error: unknown): never {
  const raised = typeof error === "object" && error !== null ? error : new Error(String(error));
  raisedOnEveryRank.add(raised);
  throw raised;
}

/**
 * Runs `action` on this rank, then tells every rank how it went: if any rank failed, or ranks
 * are not in the same operation (they called the manager in different orders), every rank throws.
 * So an error on one rank reaches all of them at the same call, instead of leaving some waiting.
 */
export async function agree<T>(
  gang: Gang,
  op: string,
  stepNr: number | undefined,
  action: () => Promise<T>,
  share: (result: T | undefined) => JsonValue = () => null,
): Promise<{ result: T; shared: JsonValue[] }> {
  let result: T | undefined;
  let localError: unknown;
  try {
    result = await action();
  } catch (error) {
    if (typeof error === "object" && error !== null && raisedOnEveryRank.has(error)) throw error;
    localError = error;
  }
  const mine: Report = {
    op,
    stepNr: stepNr ?? null,
    error: localError === undefined ? null : String((localError as Error)?.message ?? localError),
    data: localError === undefined ? share(result) : null,
  };
  const reports = (await gang.allGather(mine as unknown as JsonValue)) as unknown as Report[];
  const problems: string[] = [];
  reports.forEach((report, rank) => {
    if (report.op !== op || report.stepNr !== mine.stepNr) {
      problems.push(`rank ${rank} is in ${report.op}(${report.stepNr ?? ""}) while rank ${gang.rank} is in ${op}(${mine.stepNr ?? ""})`);
    } else if (report.error !== null && rank !== gang.rank) {
      problems.push(`rank ${rank} failed: ${report.error}`);
    }
  });
  if (localError !== undefined) raise(localError);
  if (problems.length > 0) raise(new CollectiveError(problems.join("; ")));
  return { result: result as T, shared: reports.map((report) => report.data) };
}
