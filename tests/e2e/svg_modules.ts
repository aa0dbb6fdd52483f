/**
 * Reads the QR modules back out of an SVG drawn as one stroked path of
 * horizontal runs (`M x y`, `m dx dy`, `h n`), the way `qrcode` draws it, so a
 * test can check that the SVG shows the same code, module by module.
 */
export interface ModuleGrid {
  size: number;
  dark(x: number, y: number): boolean;
}

export function renderModules(svg: string): ModuleGrid {
  const viewBox = /viewBox="0 0 (\d+) (\d+)"/.exec(svg);
  if (!viewBox) throw new Error("the SVG has no viewBox");
  const size = Number(viewBox[1]);
  const path = /<path[^>]*stroke="[^"]+"[^>]*\sd="([^"]+)"/.exec(svg) ??
    /<path[^>]*\sd="([^"]+)"[^>]*stroke="[^"]+"/.exec(svg);
  if (!path) throw new Error("the SVG has no stroked path");

  const dark = new Set<string>();
  let x = 0;
  let y = 0;
  for (const [, command, args] of path[1].matchAll(/([MmHh])([^MmHh]*)/g)) {
    const numbers = args.trim().split(/[\s,]+|(?=-)/).filter(Boolean).map(Number);
    switch (command) {
      case "M":
        [x, y] = numbers;
        break;
      case "m":
        x += numbers[0];
        y += numbers[1];
        break;
      case "h":
      case "H": {
        const to = command === "h" ? x + numbers[0] : numbers[0];
        for (let column = Math.round(x); column < Math.round(to); column++) {
          dark.add(`${column},${Math.floor(y)}`);
        }
        x = to;
        break;
      }
    }
  }
  return { size, dark: (cx, cy) => dark.has(`${cx},${cy}`) };
}
