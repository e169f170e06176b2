/**
 * The reference to one immutable, content-addressed blob of the artifact store. It lives in core because
 * workflow inputs, the trainer contract and the store all speak it; the store implements it (`store/mod.ts`).
 *
 * @module
 */
import { z } from "zod";

/** A reference to one immutable blob. */
export const RefSchema = z.object({
  uri: z.string().regex(/^cm2:\/\/sha256\/[0-9a-f]{64}$/),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().min(0),
});

/** A reference to one immutable blob: `{ uri: "cm2://sha256/<hex>", sha256, bytes }`. */
export type Ref = z.infer<typeof RefSchema>;
