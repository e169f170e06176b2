/**
 * Keeping keys out of messages. A provider's error text can echo part of the key it refused ("Incorrect API
 * key provided: sk-abcd****wxyz"), and such text becomes an activity failure message, which Temporal keeps in
 * the history. {@linkcode redactSecret} removes every run of at least {@linkcode MIN_FRAGMENT} characters of a
 * known key; {@linkcode redactKeyLike} removes what looks like a key or a bearer token even when the key is
 * not known here. Pure.
 *
 * @module
 */

/** Shortest fragment of a key that is removed (shorter ones are too common to mean anything). */
export const MIN_FRAGMENT = 6;

/** `text` with every fragment of `secret` (≥ {@linkcode MIN_FRAGMENT} characters) replaced by `[redacted]`. */
export function redactSecret(text: string, secret: string | undefined): string {
  if (!secret || secret.length < MIN_FRAGMENT) return text;
  let out = text;
  for (let len = secret.length; len >= MIN_FRAGMENT; len--) {
    for (let i = 0; i + len <= secret.length; i++) {
      const fragment = secret.slice(i, i + len);
      if (out.includes(fragment)) out = out.split(fragment).join("[redacted]");
    }
  }
  return out;
}

/** `text` without key-like tokens: `Bearer …`, `sk-…`/`sk_…` keys, and `api_key=…`-style pairs. */
export function redactKeyLike(text: string): string {
  return text
    .replace(/\b(Bearer\s+)[\w.~+/=-]{6,}/gi, "$1[redacted]")
    .replace(/\b(sk|pk|rk)[-_][\w-]{6,}/g, "$1-[redacted]")
    .replace(/\b(api[_-]?key|token|secret|password)(["']?\s*[:=]\s*["']?)[^\s"',}]{4,}/gi, "$1$2[redacted]");
}
