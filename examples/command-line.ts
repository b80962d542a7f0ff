// The examples' command-line handling: --help, one-line errors (exit 2), positive integer options.
import { parseArgs, type ParseArgsConfig } from "node:util";

export type Options = NonNullable<ParseArgsConfig["options"]>;
export type Values<T extends Options> = ReturnType<typeof parseArgs<{ options: T }>>["values"];

export interface CommandLine<T extends Options> {
  values: Values<T>;
  /** Prints `<program>: <message>` and exits 2. */
  fail(message: string): never;
  /** The option `name` as a positive integer, or a one-line error. */
  positiveInt(name: keyof T & string): number;
}

/** Parses the options (and -h/--help, which prints `usage` and exits 0); a bad flag exits 2 in one line. */
export function parseCommandLine<const T extends Options>(program: string, usage: string, options: T): CommandLine<T> {
  const fail = (message: string): never => {
    console.error(`${program}: ${message}`);
    process.exit(2);
  };
  let values: Values<T>;
  try {
    const parsed = parseArgs({ options: { ...options, help: { type: "boolean", short: "h", default: false } } });
    if ((parsed.values as { help?: boolean }).help === true) {
      console.log(usage);
      process.exit(0);
    }
    values = parsed.values as Values<T>;
  } catch (error) {
    return fail(`${(error as Error).message.split("\n")[0]} (see --help)`);
  }
  return {
    values,
    fail,
    positiveInt(name: keyof T & string): number {
      const text = String((values as Record<string, unknown>)[name]);
      const value = Number(text);
      if (!Number.isSafeInteger(value) || value < 1) fail(`--${name} must be a positive integer, got ${JSON.stringify(text)}`);
      return value;
    },
  };
}
