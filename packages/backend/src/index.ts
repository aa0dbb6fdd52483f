/** The package's public surface. */
export * from "./api.ts";
export * from "./clock.ts";
export * from "./lease.ts";
