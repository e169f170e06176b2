/**
 * JSON-schema helpers for structured output. Pure.
 *
 * @module
 */

/**
 * A copy of a JSON schema where every `type: "string"` without `maxLength` gets `maxLength: max`. Under a
 * grammar a small model can fill a string until the token limit cuts the JSON; bounded strings make the
 * object close. Opt-in (`--json-max-string`): it changes what the schema allows.
 */
export function boundStrings(schema: unknown, max: number): unknown {
  if (Array.isArray(schema)) return schema.map((s) => boundStrings(s, max));
  if (typeof schema !== "object" || schema === null) return schema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    if (DATA_KEYS.has(k)) out[k] = v;
    else if (SCHEMA_MAPS.has(k) && typeof v === "object" && v !== null && !Array.isArray(v)) {
      out[k] = Object.fromEntries(Object.entries(v).map(([name, sub]) => [name, boundStrings(sub, max)]));
    } else out[k] = boundStrings(v, max);
  }
  const type = out.type;
  const isString = type === "string" || (Array.isArray(type) && type.includes("string"));
  if (isString && out.maxLength === undefined && out.enum === undefined && out.const === undefined) {
    out.maxLength = max;
  }
  return out;
}

/** Schema keywords whose values are data, not schemas. */
const DATA_KEYS = new Set(["enum", "const", "default", "examples"]);
/** Schema keywords whose values map names to schemas. */
const SCHEMA_MAPS = new Set(["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"]);
