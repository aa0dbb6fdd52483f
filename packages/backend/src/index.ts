/** The package's public surface (the Baileys auth state is `@device-qr/backend/baileys`). */
export * from "./api.ts";
export * from "./client.ts";
export * from "./clock.ts";
export * from "./crypto.ts";
export * from "./lease.ts";
