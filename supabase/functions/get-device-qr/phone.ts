/**
 * The number a user links a device by. Checked here against libphonenumber's
 * full metadata (each country's valid ranges), because WhatsApp answers a
 * malformed number with a code that never works; passed on as E.164
 * (`+14155550123`), whose digits are all the database keeps. The number is
 * never echoed in an error nor logged.
 */
import { parsePhoneNumberFromString } from "libphonenumber-js/max";
import { z } from "zod";

export const PairingPhone = z.string({ error: "pairing_phone must be a string" }).max(40, {
  error: "pairing_phone is too long for a phone number",
}).transform((text, ctx) => {
  // Without a default country, only a number in international format parses.
  const phone = parsePhoneNumberFromString(text);
  if (!phone?.isValid()) {
    ctx.addIssue({
      code: "custom",
      message:
        "pairing_phone must be a valid phone number in international format, such as +14155550123",
    });
    return z.NEVER;
  }
  return phone.number;
});
