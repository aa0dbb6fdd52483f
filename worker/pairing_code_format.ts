/**
 * How WhatsApp shows a pairing code to the user ("ABCD-EFGH"); typed with or
 * without the dash. A module of its own, with no imports, because the demo page
 * shows codes too and a browser bundle must not pull in the backend package.
 */
export function formatPairingCode(code: string): string {
  return code.length === 8 ? `${code.slice(0, 4)}-${code.slice(4)}` : code;
}
