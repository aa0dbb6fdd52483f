/** Test key rings: fresh random keys, as `openssl rand -base64 32` makes them. */
export function randomKey(id: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return `${id}:${btoa(String.fromCharCode(...bytes))}`;
}
