/**
 * The hand-parsed command lines of the benches (scale-bench, switch-bench): each argument is
 * `--flag value` or `--flag=value`; a mistake prints `<bench>: <what>` and the usage line on
 * stderr and exits with status 2.
 */

/** Print `name: msg` (when there is one) and the usage line on stderr, and exit 2. */
export function usageExit(name: string, usageLine: string, msg?: string): never {
  if (msg) process.stderr.write(`${name}: ${msg}\n`);
  process.stderr.write(`${usageLine}\n`);
  process.exit(2);
}

/** `--help`: print `text` on stdout and exit 0. */
export function helpExit(text: string): never {
  process.stdout.write(`${text}\n`);
  process.exit(0);
}

/**
 * Call `on` for every argument, in order, with its flag (the part before `=`), `value()` (the
 * text after `=`, else the next argument, which is then consumed; none is
 * `usage("<flag> needs a value")`) and the argument as written.
 */
export function forEachFlag(argv: readonly string[], usage: (msg: string) => never, on: (flag: string, value: () => string, arg: string) => void): void {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const [flag, inline] = eq >= 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    on(
      flag,
      () => {
        const v = inline ?? argv[++i];
        if (v === undefined) usage(`${flag} needs a value`);
        return v;
      },
      a,
    );
  }
}

/** `v` as a whole number of at least `min`, else `usage("<flag> needs a whole number ≥ <min>, got …")`. */
export function wholeArg(flag: string, v: string, min: number, usage: (msg: string) => never): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) usage(`${flag} needs a whole number ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}
