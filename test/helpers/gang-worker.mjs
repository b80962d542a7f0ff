// A worker for the launcher tests, started by the built `ckpt launch` as
// `node test/helpers/gang-worker.mjs SCENARIO`. It uses the built library (dist/), as a user's
// script would. CKPT_TEST_TARGET names the rank that misbehaves in the failure scenarios.
// Every line it prints is a marker the tests parse: "PID n", "READY", "RESULT {...}", "GANG_ERROR {...}".
import { closeGangs, initGangs } from "../../dist/index.js";

const scenario = process.argv[2];
const rank = Number(process.env.CKPT_RANK);
const target = Number(process.env.CKPT_TEST_TARGET ?? "-1");
const print = (line) => process.stdout.write(`${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

print(`PID ${process.pid}`);

/** Waits in a root barrier; a failure is printed and ends the worker with exit code 3. */
async function barrierOrReport(gangs) {
  try {
    await gangs.root.barrier();
    print("BARRIER OK");
  } catch (error) {
    print(`GANG_ERROR ${JSON.stringify({ name: error.name, code: error.code, rank: error.rank ?? null, message: error.message })}`);
    process.exit(3);
  }
}

switch (scenario) {
  case "collectives": {
    const gangs = await initGangs();
    const info = (gang) => ({ rank: gang.rank, size: gang.size });
    const result = {
      rank,
      localRank: Number(process.env.CKPT_LOCAL_RANK),
      root: info(gangs.root),
      dp: info(gangs.dp),
      tp: info(gangs.tp),
      rootGather: await gangs.root.allGather({ from: rank }),
      dpGather: await gangs.dp.allGather(rank),
      tpGather: await gangs.tp.allGather(`tp-${rank}`),
      rootSum: Array.from(await gangs.root.allReduceSum(Float32Array.of(rank, 0.5 * rank, 1))),
      dpSum: Array.from(await gangs.dp.allReduceSum(Float32Array.of(rank))),
      tpSum: Array.from(await gangs.tp.allReduceSum(Float32Array.of(rank, -rank))),
    };
    await gangs.root.barrier();
    // Rounds of the three gangs in another order on each rank: each gang keeps its own count.
    if (rank % 2 === 0) result.again = [await gangs.tp.allGather(rank), await gangs.dp.allGather(rank)];
    else {
      const [dp, tp] = await Promise.all([gangs.dp.allGather(rank), gangs.tp.allGather(rank)]);
      result.again = [tp, dp];
    }
    result.secondInit = await initGangs().then(() => "accepted", (error) => `${error.name}: ${error.message}`);
    print(`RESULT ${JSON.stringify(result)}`);
    await closeGangs(gangs);
    break;
  }
  case "die-in-barrier": {
    const gangs = await initGangs();
    await gangs.root.allGather(rank); // every worker is up
    if (rank === target) process.kill(process.pid, "SIGKILL");
    await barrierOrReport(gangs);
    break;
  }
  case "throw": {
    const gangs = await initGangs();
    await gangs.root.allGather(rank);
    if (rank === target) throw new Error(`boom from rank ${rank}`);
    await barrierOrReport(gangs);
    break;
  }
  case "exit-early": {
    const gangs = await initGangs();
    await gangs.root.allGather(rank);
    if (rank === target) process.exit(0);
    await barrierOrReport(gangs);
    break;
  }
  case "close-and-linger": {
    const gangs = await initGangs();
    await gangs.root.allGather(rank);
    if (rank === target) {
      await closeGangs(gangs); // leaves the gangs but runs on for a while
      await sleep(1500);
      print("LINGERED");
      process.exit(0);
    }
    await barrierOrReport(gangs);
    break;
  }
  case "timeout": {
    const gangs = await initGangs();
    await gangs.root.allGather(rank);
    if (rank === target) await sleep(120_000); // alive, but never joins the barrier
    await barrierOrReport(gangs);
    break;
  }
  case "finish-without-close": {
    // Ends without closeGangs: the IPC channel must not keep the process alive.
    const gangs = await initGangs();
    await gangs.root.barrier();
    print("DONE");
    break;
  }
  case "wait-for-sigterm": {
    const gangs = await initGangs();
    process.on("SIGTERM", () => {
      print("GOT SIGTERM");
      process.exit(0);
    });
    await gangs.root.barrier();
    print("READY");
    await sleep(120_000);
    break;
  }
  case "stubborn": {
    // The target exits 5 once all are up; rank 2 ignores SIGTERM, so only SIGKILL stops it.
    const gangs = await initGangs();
    if (rank === 2) process.on("SIGTERM", () => print("IGNORED SIGTERM"));
    await gangs.root.barrier();
    if (rank === target) process.exit(5);
    await sleep(120_000);
    break;
  }
  case "grandchild": {
    // A process the worker starts inherits its stdout and outlives it.
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 120000)"], { stdio: ["ignore", "inherit", "inherit"] });
    child.unref();
    print(`GRANDCHILD ${child.pid}`);
    break;
  }
  case "output": {
    process.stdout.write("first line\nsecond ");
    await sleep(20);
    process.stdout.write("half\n");
    process.stderr.write("to stderr\n");
    process.stdout.write("no newline at end");
    break;
  }
  case "env": {
    const names = ["CKPT_RANK", "CKPT_WORLD_SIZE", "CKPT_LOCAL_RANK", "CKPT_DP_SIZE", "CKPT_TP_SIZE", "CKPT_RENDEZVOUS", "CKPT_JOB_ID", "CKPT_NNODES", "CKPT_NODE_RANK"];
    print(`RESULT ${JSON.stringify(Object.fromEntries(names.map((name) => [name, process.env[name] ?? null])))}`);
    break;
  }
  default:
    throw new Error(`unknown scenario ${scenario}`);
}
