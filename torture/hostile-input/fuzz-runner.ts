/**
 * The parent's side of the fuzz child: sends one case at a time and waits for its answer up to a
 * deadline; a case that does not answer in time is a hang (the child is killed and replaced), a
 * child that dies is a crash.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { FuzzAnswer, FuzzCase } from "./fuzz-child.js";

const CHILD = fileURLToPath(new URL("./fuzz-child.ts", import.meta.url));
const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export type CaseEnd = FuzzAnswer | { id: number; outcome: "hang" | "crash"; error: string };

export class FuzzRunner {
  private child: ChildProcess | undefined;
  private ready: Promise<void> | undefined;

  constructor(private readonly deadlineMs: number) {}

  private start(): Promise<void> {
    const child = fork(CHILD, [], { cwd: REPO_ROOT, execArgv: ["--import", "tsx", "--expose-gc"], stdio: ["ignore", "ignore", "pipe", "ipc"] });
    child.stderr?.resume(); // warnings of damaged files are expected; keep the pipe drained
    this.child = child;
    this.ready = new Promise((resolve, reject) => {
      child.once("message", () => resolve());
      child.once("exit", (code) => reject(new Error(`the fuzz child exited with ${code} before it was ready`)));
    });
    return this.ready;
  }

  async run(fuzzCase: FuzzCase): Promise<CaseEnd> {
    if (this.child === undefined) await this.start();
    await this.ready;
    const child = this.child!;
    return new Promise<CaseEnd>((resolve) => {
      const finish = (end: CaseEnd): void => {
        clearTimeout(timer);
        child.off("message", onMessage);
        child.off("exit", onExit);
        resolve(end);
      };
      const onMessage = (answer: FuzzAnswer): void => finish(answer);
      const onExit = (code: number | null, signal: string | null): void => {
        this.child = undefined;
        finish({ id: fuzzCase.id, outcome: "crash", error: `the child died (${code ?? signal})` });
      };
      const timer = setTimeout(() => {
        child.off("exit", onExit);
        child.kill("SIGKILL");
        this.child = undefined;
        finish({ id: fuzzCase.id, outcome: "hang", error: `no answer in ${this.deadlineMs} ms` });
      }, this.deadlineMs);
      child.on("message", onMessage);
      child.on("exit", onExit);
      child.send(fuzzCase);
    });
  }

  stop(): void {
    this.child?.kill("SIGKILL");
    this.child = undefined;
  }
}
