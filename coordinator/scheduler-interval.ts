/**
 * Schedule intervals as people write them: "90s", "15m", "1h", "2h30m", "1d". One parser (the
 * CLI's --every) and one formatter (the CLI's tables and the coordinator's messages), so an
 * interval reads back the way it was typed. Also the bounds SetSchedule enforces.
 */

export const MIN_EVERY_MS = 60_000;
export const MAX_EVERY_MS = 366 * 86_400_000;

const UNITS: readonly (readonly [string, number])[] = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
];

/** "2h30m" → 9000000; undefined when it is not a sequence of whole numbers with d/h/m/s units. */
export function parseInterval(text: string): number | undefined {
  if (!/^(\d+[dhms])+$/.test(text)) return undefined;
  let ms = 0;
  for (const m of text.matchAll(/(\d+)([dhms])/g)) ms += Number(m[1]) * (UNITS.find((u) => u[0] === m[2]) as readonly [string, number])[1];
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** 9000000 → "2h30m"; 0 → "0s"; a rest below a second is dropped. */
export function formatInterval(ms: number): string {
  let rest = Math.floor(ms / 1000) * 1000;
  let out = '';
  for (const [unit, size] of UNITS) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  return out || '0s';
}
