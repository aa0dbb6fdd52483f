/**
 * Summaries of repeated measurements. Every figure in the report is a median
 * with its spread, because this machine is shared and single runs are noise.
 */

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
  /** Interquartile range: the spread the report quotes next to each median. */
  p25: number;
  p75: number;
}

/** The q-quantile (0..1) of sorted values, linearly interpolated. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function summarize(values: readonly number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    n: sorted.length,
    median: quantile(sorted, 0.5),
    min: sorted[0] ?? NaN,
    max: sorted[sorted.length - 1] ?? NaN,
    p25: quantile(sorted, 0.25),
    p75: quantile(sorted, 0.75),
  };
}

/** A number for a table cell: few significant digits, no exponent for everyday sizes. */
export function fmt(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toLocaleString("en-US");
  if (abs >= 100) return value.toFixed(0);
  return Number(value.toPrecision(digits)).toString();
}

/** "median (min–max, n)", the way every figure is quoted. */
export function quote(s: Summary, unit = ""): string {
  return `${fmt(s.median)}${unit} (${fmt(s.min)}–${fmt(s.max)}, n=${s.n})`;
}
