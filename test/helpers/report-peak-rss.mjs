// Preloaded with `node --import` to report the process's peak resident memory (in KiB) on stderr
// as it exits, so a test can bound what a command held in memory.
process.on("exit", () => process.stderr.write(`peak-rss-kib ${process.resourceUsage().maxRSS}\n`));
