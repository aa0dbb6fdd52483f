/**
 * Two small SVG charts drawn by hand (no plotting dependency): grouped bars
 * with min–max whiskers, and lines on a log-log plane.
 */

export interface BarGroup {
  label: string;
  bars: { series: string; median: number; min: number; max: number }[];
}

const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");

function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

export function barChart(title: string, unit: string, groups: BarGroup[]): string {
  const width = 760;
  const height = 360;
  const left = 70;
  const right = 20;
  const top = 40;
  const bottom = 70;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const series = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.series)))];
  const yMax = niceMax(Math.max(...groups.flatMap((g) => g.bars.map((b) => b.max))));
  const y = (v: number) => top + plotH - (v / yMax) * plotH;
  const groupW = plotW / groups.length;
  const barW = (groupW * 0.8) / series.length;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const v = (yMax / 5) * i;
    out.push(
      `<line x1="${left}" x2="${width - right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`,
    );
  }
  out.push(
    `<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${
      top + plotH / 2
    })" text-anchor="middle">${esc(unit)}</text>`,
  );
  groups.forEach((group, gi) => {
    const x0 = left + gi * groupW + groupW * 0.1;
    group.bars.forEach((bar) => {
      const si = series.indexOf(bar.series);
      const x = x0 + si * barW;
      const color = COLORS[si % COLORS.length];
      out.push(
        `<rect x="${x}" y="${y(bar.median)}" width="${barW - 2}" height="${
          top + plotH - y(bar.median)
        }" fill="${color}"><title>${esc(bar.series)} ${esc(group.label)}: ${
          bar.median.toFixed(0)
        }</title></rect>`,
        `<line x1="${x + barW / 2 - 1}" x2="${x + barW / 2 - 1}" y1="${y(bar.min)}" y2="${
          y(bar.max)
        }" stroke="black"/>`,
      );
    });
    out.push(
      `<text x="${x0 + groupW * 0.4}" y="${top + plotH + 18}" text-anchor="middle">${
        esc(group.label)
      }</text>`,
    );
  });
  series.forEach((name, si) => {
    const x = left + si * 130;
    const yy = height - 22;
    out.push(
      `<rect x="${x}" y="${yy - 10}" width="12" height="12" fill="${COLORS[si % COLORS.length]}"/>`,
      `<text x="${x + 16}" y="${yy}">${esc(name)}</text>`,
    );
  });
  out.push(`</svg>`);
  return out.join("\n");
}

export interface Line {
  series: string;
  points: { x: number; y: number }[];
}

/** Lines on log-log axes, with a dashed horizontal target line. */
export function logLogChart(
  title: string,
  xLabel: string,
  yLabel: string,
  lines: Line[],
  target?: { y: number; label: string },
): string {
  const width = 760;
  const height = 360;
  const left = 70;
  const right = 45;
  const top = 40;
  const bottom = 70;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const xs = lines.flatMap((l) => l.points.map((p) => p.x));
  const ys = lines.flatMap((l) => l.points.map((p) => p.y)).concat(target ? [target.y] : []);
  const x0 = Math.floor(Math.log10(Math.min(...xs)));
  const x1 = Math.ceil(Math.log10(Math.max(...xs)));
  const y0 = Math.floor(Math.log10(Math.max(Math.min(...ys), 0.01)));
  const y1 = Math.ceil(Math.log10(Math.max(...ys)));
  const sx = (v: number) => left + ((Math.log10(v) - x0) / Math.max(x1 - x0, 1)) * plotW;
  const sy = (v: number) =>
    top + plotH - ((Math.log10(Math.max(v, 0.01)) - y0) / Math.max(y1 - y0, 1)) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
  ];
  for (let e = y0; e <= y1; e++) {
    out.push(
      `<line x1="${left}" x2="${width - right}" y1="${sy(10 ** e)}" y2="${
        sy(10 ** e)
      }" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${sy(10 ** e) + 4}" text-anchor="end">${10 ** e}</text>`,
    );
  }
  for (let e = x0; e <= x1; e++) {
    out.push(
      `<text x="${sx(10 ** e)}" y="${top + plotH + 18}" text-anchor="middle">${
        (10 ** e).toLocaleString("en-US")
      }</text>`,
    );
  }
  out.push(
    `<text x="${left + plotW / 2}" y="${top + plotH + 36}" text-anchor="middle">${
      esc(xLabel)
    }</text>`,
    `<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${
      top + plotH / 2
    })" text-anchor="middle">${esc(yLabel)}</text>`,
  );
  if (target) {
    out.push(
      `<line x1="${left}" x2="${width - right}" y1="${sy(target.y)}" y2="${
        sy(target.y)
      }" stroke="#e15759" stroke-dasharray="6 4"/>`,
      `<text x="${width - right - 4}" y="${sy(target.y) - 4}" text-anchor="end" fill="#e15759">${
        esc(target.label)
      }</text>`,
    );
  }
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    const path = line.points.map((p, k) => `${k === 0 ? "M" : "L"}${sx(p.x)},${sy(p.y)}`).join(" ");
    out.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="2"/>`);
    for (const p of line.points) {
      out.push(`<circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="3" fill="${color}"/>`);
    }
    const lx = left + i * 180;
    out.push(
      `<rect x="${lx}" y="${height - 32}" width="12" height="12" fill="${color}"/>`,
      `<text x="${lx + 16}" y="${height - 22}">${esc(line.series)}</text>`,
    );
  });
  out.push(`</svg>`);
  return out.join("\n");
}
