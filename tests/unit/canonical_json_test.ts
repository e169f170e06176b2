import assert from "node:assert/strict";
import {
  canonicalJson,
  compareCodePoints,
  isJsonObject,
  pyJson,
  stripLoneSurrogates,
} from "../../core/canonical_json.ts";

// Golden strings below were produced by CPython 3 json.dumps with the matching options.

Deno.test("canonicalJson() sorts keys by code point, escapes non-ASCII and uses no spaces", () => {
  const value = {
    b: [1, 2.5, { z: null, a: true }],
    a: 'é\u00ff\u{1F600}\x01\x7f\n"\\',
    "\uffff": 1,
    "\u{10000}": 2,
  };
  assert.equal(
    canonicalJson(value),
    '{"a":"\\u00e9\\u00ff\\ud83d\\ude00\\u0001\\u007f\\n\\"\\\\","b":[1,2.5,{"a":true,"z":null}],"\\uffff":1,"\\ud800\\udc00":2}',
  );
});

Deno.test("canonicalJson() ignores key order at every depth", () => {
  assert.equal(
    canonicalJson({ x: { b: 1, a: [{ d: 1, c: 2 }] } }),
    canonicalJson({ x: { a: [{ c: 2, d: 1 }], b: 1 } }),
  );
});

Deno.test("canonicalJson() cannot tell 1 from 1.0 (documented) but tells '1' from 1", () => {
  assert.equal(canonicalJson(JSON.parse('{"n": 1.0}')), canonicalJson(JSON.parse('{"n": 1}')));
  assert.notEqual(canonicalJson({ n: "1" }), canonicalJson({ n: 1 }));
  assert.equal(canonicalJson({ n: 1e21, m: -0.5 }), '{"m":-0.5,"n":1e+21}');
});

Deno.test("pyJson() matches json.dumps defaults and indent forms", () => {
  assert.equal(pyJson({ a: "é", b: [1, 2] }), '{"a": "\\u00e9", "b": [1, 2]}');
  assert.equal(
    pyJson({ a: [1, { b: [] }], c: {} }, { indent: 0 }),
    '{\n"a": [\n1,\n{\n"b": []\n}\n],\n"c": {}\n}',
  );
  assert.equal(
    pyJson({ a: [1, { b: [] }], c: {} }, { indent: 2 }),
    '{\n  "a": [\n    1,\n    {\n      "b": []\n    }\n  ],\n  "c": {}\n}',
  );
  assert.equal(pyJson({ a: "é\x7f" }, { ensureAscii: false }), '{"a": "é\x7f"}');
});

Deno.test("pyJson() drops undefined object fields and writes undefined array entries as null", () => {
  assert.equal(pyJson({ a: undefined, b: [undefined, NaN] }), '{"b": [null, null]}');
  assert.equal(pyJson(undefined), "null");
});

Deno.test("compareCodePoints() orders astral characters after U+FFFF, unlike UTF-16 order", () => {
  assert.ok(compareCodePoints("\u{10000}", "\uffff") > 0);
  assert.ok("\u{10000}" < "\uffff"); // plain JS order differs
  assert.ok(compareCodePoints("a", "ab") < 0);
  assert.equal(compareCodePoints("x", "x"), 0);
});

Deno.test("stripLoneSurrogates() keeps pairs and drops lone halves", () => {
  assert.equal(stripLoneSurrogates("a\ud800b\udc00c\u{1F600}"), "abc\u{1F600}");
});

Deno.test("isJsonObject() accepts plain objects only", () => {
  assert.ok(isJsonObject({}));
  assert.ok(!isJsonObject([]));
  assert.ok(!isJsonObject(null));
  assert.ok(!isJsonObject("x"));
});
