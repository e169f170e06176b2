/**
 * JSON text forms used by the episode engine, written to match what the CM2 reference (Python's
 * `json.dumps`) produces, so that prompts and tool outputs look the same:
 *
 * - {@linkcode canonicalJson}: the exact-match key of the hybrid tool simulator (§3.3): keys sorted
 *   recursively, non-ASCII escaped as `\uXXXX`, no spaces.
 * - {@linkcode pyJson}: `json.dumps` with its options (`indent`, `sort_keys`, `ensure_ascii`), for text
 *   shown to models.
 *
 * Numbers are written the JavaScript way. JSON parsed in JavaScript cannot tell `1` from `1.0` (both are
 * the number 1), so `{"x": 1}` and `{"x": 1.0}` have the same canonical form and match each other, where
 * the Python reference would see two different calls. Strings still differ from numbers (`"1"` ≠ `1`).
 * Non-finite numbers are written as `null` (they cannot come out of `JSON.parse`).
 *
 * Pure, no I/O.
 *
 * @module
 */

/** Options of {@linkcode pyJson}, named after the `json.dumps` arguments they mirror. */
export interface PyJsonOptions {
  /** `null` (default): one line with `", "` and `": "` separators; a number: newline + that many spaces per level. */
  indent?: number | null;
  /** Sort object keys (by code point, as Python does). Default false. */
  sortKeys?: boolean;
  /** Escape every character outside printable ASCII as `\uXXXX`. Default true (Python's default). */
  ensureAscii?: boolean;
  /** Item and key separators; default `[", ", ": "]`, or `[",", ": "]` when `indent` is set. */
  separators?: readonly [string, string];
}

/**
 * The canonical form used for exact-match replay: keys sorted recursively, ASCII-escaped, separators
 * `,` and `:` with no spaces (Python `json.dumps(v, sort_keys=True, ensure_ascii=True, separators=(",", ":"))`).
 *
 * @example
 * ```ts
 * canonicalJson({ b: 1, a: ["é", 2.0] }); // '{"a":["\\u00e9",2],"b":1}'
 * ```
 */
export function canonicalJson(value: unknown): string {
  return pyJson(value, { sortKeys: true, ensureAscii: true, separators: [",", ":"] });
}

/**
 * Serialise like Python's `json.dumps`. Without options this is `json.dumps(value)`: one line,
 * `", "` / `": "` separators, non-ASCII escaped.
 *
 * @example
 * ```ts
 * pyJson({ a: [1, 2] }); // '{"a": [1, 2]}'
 * pyJson({ a: [1, 2] }, { indent: 0 }); // '{\n"a": [\n1,\n2\n]\n}'
 * ```
 */
export function pyJson(value: unknown, opts: PyJsonOptions = {}): string {
  const indent = opts.indent ?? null;
  const [itemSep, keySep] = opts.separators ?? (indent === null ? [", ", ": "] : [",", ": "]);
  const ascii = opts.ensureAscii ?? true;
  const sortKeys = opts.sortKeys ?? false;
  const pad = indent === null ? null : " ".repeat(indent);

  const write = (v: unknown, depth: number): string | undefined => {
    if (v === null) return "null";
    if (v !== null && typeof v === "object" && typeof (v as { toJSON?: unknown }).toJSON === "function") {
      v = (v as { toJSON: () => unknown }).toJSON();
    }
    switch (typeof v) {
      case "string":
        return quote(v, ascii);
      case "number":
        return Number.isFinite(v) ? JSON.stringify(v) : "null";
      case "boolean":
        return v ? "true" : "false";
      case "bigint":
        return v.toString();
      case "undefined":
      case "function":
      case "symbol":
        return undefined;
    }
    const open = (ch: string) => pad === null ? ch : `${ch}\n${pad.repeat(depth + 1)}`;
    const close = (ch: string) => pad === null ? ch : `\n${pad.repeat(depth)}${ch}`;
    const sep = pad === null ? itemSep : `${itemSep}\n${pad.repeat(depth + 1)}`;
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      const parts = v.map((x) => write(x, depth + 1) ?? "null");
      return open("[") + parts.join(sep) + close("]");
    }
    const obj = v as Record<string, unknown>;
    let keys = Object.keys(obj);
    if (sortKeys) keys = keys.sort(compareCodePoints);
    const parts: string[] = [];
    for (const k of keys) {
      const text = write(obj[k], depth + 1);
      if (text !== undefined) parts.push(quote(k, ascii) + keySep + text);
    }
    if (parts.length === 0) return "{}";
    return open("{") + parts.join(sep) + close("}");
  };
  return write(value, 0) ?? "null";
}

/** Orders strings by Unicode code point (Python's `str` order), not by UTF-16 code unit. */
export function compareCodePoints(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ca = a.codePointAt(i)!;
    const cb = b.codePointAt(j)!;
    if (ca !== cb) return ca < cb ? -1 : 1;
    i += ca > 0xffff ? 2 : 1;
    j += cb > 0xffff ? 2 : 1;
  }
  return (a.length - i) - (b.length - j);
}

const SHORT_ESCAPES: Record<string, string> = {
  '"': '\\"',
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\b": "\\b",
  "\f": "\\f",
};

function hex4(code: number): string {
  return "\\u" + code.toString(16).padStart(4, "0");
}

/** Quote a string as Python's json encoder does (lowercase hex escapes, surrogate pairs kept as pairs). */
function quote(s: string, ascii: boolean): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    const code = s.charCodeAt(i);
    const short = SHORT_ESCAPES[ch];
    if (short !== undefined) out += short;
    else if (code < 0x20) out += hex4(code);
    else if (ascii && code > 0x7e) out += hex4(code);
    else out += ch;
  }
  return out + '"';
}

/** Removes lone UTF-16 surrogates (the reference strips them from replayed tool output). */
export function stripLoneSurrogates(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "");
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}
