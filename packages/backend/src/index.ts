/** The package's public surface. */
export * from "./api.ts";
export * from "./client.ts";
export * from "./clock.ts";
export * from "./lease.ts";
