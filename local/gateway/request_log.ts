/**
 * One line per request — time, method, path, status, milliseconds — appended to
 * a file in the state dir. Never the query string, headers or body, so no token
 * or key lands in a log.
 */
export class RequestLog {
  private readonly encoder = new TextEncoder();

  private constructor(private readonly file: Deno.FsFile) {}

  static async open(path: string): Promise<RequestLog> {
    return new RequestLog(await Deno.open(path, { create: true, append: true }));
  }

  record(method: string, path: string, status: number, ms: number): void {
    const line = `${new Date().toISOString()} ${method} ${path} ${status} ${ms.toFixed(1)}ms\n`;
    this.file.writeSync(this.encoder.encode(line));
  }

  close(): void {
    this.file.close();
  }
}
