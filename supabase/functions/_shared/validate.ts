/** Input validation at the edge: zod parses, and a failure becomes one `invalid_request`. */
import type { z } from "zod";
import { ApiError } from "./http.ts";

export function validate<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.join("."),
    code: issue.code,
    message: issue.message,
  }));
  const first = issues[0];
  throw new ApiError(
    "invalid_request",
    first ? `${first.path || "request"}: ${first.message}` : "The request is invalid.",
    { details: { issues } },
  );
}
