/**
 * Importer for ToolTalk conversations (microsoft/ToolTalk `data/{easy,tooltalk}/*.json`, one
 * conversation per file). Mapping, per `conversation[]` entry:
 *
 * - a system message first (unless `systemMessage: false`) telling the assistant the user's location
 *   and the current time from `metadata`, and, when `user.session_token` is set, that the user is
 *   logged in as `user.username` with that token (ToolTalk's executor injects the token; here the
 *   policy must pass it, so it has to see it);
 * - `user` → a user message;
 * - `assistant` with `apis` → per API request one assistant message with a single tool call
 *   (`call_<k>`, k counted over the conversation, arguments = JSON of `request.parameters`), followed
 *   by its tool message (JSON of `response`, or `{"error": exception}` when `exception` is set);
 *   then the assistant's text as the reply;
 * - trailing user messages that no assistant answered (usually "thanks, that's all") are dropped,
 *   and their number is kept in `meta.trimmed_trailing_user`.
 *
 * Candidate tools: by default every tool of the conversation's `suites_used` (what ToolTalk gives its
 * model), or only `apis_used`. Tools that require auth get a required `session_token` string
 * parameter, since the recorded calls pass it.
 *
 * One catalog defect is repaired (option `repairSchemas`, default true): `CreateEvent` puts
 * `enum: ["meeting", "event"]` on `name` although `event_type` is described as "either 'meeting' or
 * 'event'" and every recorded call passes a free-text name; the enum is moved to `event_type`.
 * Without the repair 13 conversations fail the `tool_schema` filter on that enum. Pure, no I/O.
 *
 * @module
 */
import { preview, type ToolSchema, ToolSchemaSchema } from "../records.ts";
import {
  type ImportResult,
  type ImportSource,
  isObject,
  parseJson,
  RecordCollector,
  trimTrailingUser,
} from "./_common.ts";

/** The ToolTalk tool catalog: OpenAI tools by name, the tools needing auth, suite name → tool names. */
export interface ToolTalkCatalog {
  tools: Map<string, ToolSchema>;
  requiresAuth: Set<string>;
  suites: Map<string, string[]>;
}

/** Options of {@linkcode importToolTalk}. */
export interface ToolTalkOptions {
  catalog: ToolTalkCatalog;
  /** `"suites"` (default): all tools of `suites_used`; `"apis_used"`: only the listed APIs. */
  candidateTools?: "suites" | "apis_used";
  /** Prepend the system message with location, time and login state (default true). */
  systemMessage?: boolean;
  /** Repair the known catalog defect described in the module doc (default true). */
  repairSchemas?: boolean;
}

/** Moves CreateEvent's misplaced `enum` from `name` to `event_type` (see the module doc). */
export function repairToolTalkSchema(tool: ToolSchema): ToolSchema {
  const props = tool.function.parameters.properties;
  if (tool.function.name !== "CreateEvent" || !isObject(props)) return tool;
  const { name, event_type: eventType } = props;
  if (!isObject(name) || !Array.isArray(name.enum) || !isObject(eventType) || eventType.enum !== undefined) {
    return tool;
  }
  const { enum: values, ...nameRest } = name;
  return {
    ...tool,
    function: {
      ...tool.function,
      parameters: {
        ...tool.function.parameters,
        properties: { ...props, name: nameRest, event_type: { ...eventType, enum: values } },
      },
    },
  };
}

const SESSION_TOKEN_PROPERTY = {
  type: "string",
  description:
    "Session token of the logged-in user (given in the system message or returned by UserLogin/RegisterUser).",
};

/**
 * Parses `tooltalk_openai_tools.derived.json` (`tools`, `tool_meta[name].requires_auth`,
 * `suites[*].{name, apis}` where `apis` is a string like `"[A, B]"`).
 *
 * @throws {Error} when the text is not such a catalog
 */
export function parseToolTalkCatalog(text: string): ToolTalkCatalog {
  const parsed = parseJson(text);
  if (!parsed.ok || !isObject(parsed.value) || !Array.isArray(parsed.value.tools)) {
    throw new Error("ToolTalk tool catalog must be a JSON object with a tools array");
  }
  const { tools, tool_meta: meta, suites } = parsed.value;
  const catalog: ToolTalkCatalog = { tools: new Map(), requiresAuth: new Set(), suites: new Map() };
  for (const raw of tools as unknown[]) {
    const tool = ToolSchemaSchema.parse(raw);
    catalog.tools.set(tool.function.name, tool);
  }
  if (isObject(meta)) {
    for (const [name, m] of Object.entries(meta)) {
      if (isObject(m) && m.requires_auth === true) catalog.requiresAuth.add(name);
    }
  }
  if (isObject(suites)) {
    for (const s of Object.values(suites)) {
      if (!isObject(s) || typeof s.name !== "string") continue;
      const apis = Array.isArray(s.apis)
        ? s.apis.map(String)
        : String(s.apis ?? "").replace(/^\[|\]$/g, "").split(",").map((a) => a.trim()).filter((a) =>
          a !== ""
        );
      catalog.suites.set(s.name, apis);
    }
  }
  return catalog;
}

function withSessionToken(tool: ToolSchema): ToolSchema {
  const params = tool.function.parameters;
  const properties = isObject(params.properties) ? params.properties : {};
  const required = Array.isArray(params.required) ? params.required : [];
  return {
    ...tool,
    function: {
      ...tool.function,
      parameters: {
        ...params,
        properties: { ...properties, session_token: SESSION_TOKEN_PROPERTY },
        required: required.includes("session_token") ? required : [...required, "session_token"],
      },
    },
  };
}

function candidateTools(conv: Record<string, unknown>, options: ToolTalkOptions): string[] {
  const names: string[] = [];
  const add = (n: string) => {
    if (!names.includes(n)) names.push(n);
  };
  if ((options.candidateTools ?? "suites") === "suites" && Array.isArray(conv.suites_used)) {
    for (const s of conv.suites_used) for (const n of options.catalog.suites.get(String(s)) ?? []) add(n);
  }
  if (Array.isArray(conv.apis_used)) { for (const n of conv.apis_used) add(String(n)); }
  return names;
}

function systemText(conv: Record<string, unknown>): string {
  const meta = isObject(conv.metadata) ? conv.metadata : {};
  const user = isObject(conv.user) ? conv.user : {};
  const parts = ["You are a helpful assistant that can use tools."];
  if (typeof meta.location === "string") parts.push(`The user is located in ${meta.location}.`);
  if (typeof meta.timestamp === "string") parts.push(`The current time is ${meta.timestamp}.`);
  if (typeof user.session_token === "string") {
    parts.push(
      `The user is logged in as ${
        String(user.username)
      }; pass session_token "${user.session_token}" to tools that need it.`,
    );
  } else parts.push("The user is not logged in.");
  return parts.join(" ");
}

/**
 * Imports one ToolTalk conversation file. The record uuid is `tooltalk-<name>`; `meta` keeps the
 * source, conversation id, name, suites and APIs used.
 */
export function importToolTalk(text: string, source: ImportSource, options: ToolTalkOptions): ImportResult {
  const out = new RecordCollector(source.file, source.validation);
  const parsed = parseJson(text);
  if (!parsed.ok) {
    out.fail({ index: 0 }, {
      path: "$",
      message: `File is not valid JSON: ${parsed.message}`,
      value: preview(text, 40),
    });
    return out.result();
  }
  const conv = parsed.value;
  if (!isObject(conv) || !Array.isArray(conv.conversation)) {
    out.fail({ index: 0 }, {
      path: "conversation",
      message: "ToolTalk file must hold a conversation array",
      value: "",
    });
    return out.result();
  }
  const name = typeof conv.name === "string" ? conv.name : String(conv.conversation_id ?? "");
  const ref = { index: 0, id: `tooltalk-${name}` };
  const messages: Record<string, unknown>[] = [];
  if (options.systemMessage ?? true) {
    messages.push({ role: "system", content: systemText(conv), tool_calls: [] });
  }
  let callNo = 0;
  for (let i = 0; i < conv.conversation.length; i++) {
    const turn: unknown = conv.conversation[i];
    if (
      !isObject(turn) || (turn.role !== "user" && turn.role !== "assistant") || typeof turn.text !== "string"
    ) {
      const issue = {
        path: `conversation[${i}]`,
        message: "ToolTalk turn must have role user or assistant and a text",
      };
      out.fail(ref, { ...issue, value: preview(turn) });
      return out.result();
    }
    if (turn.role === "assistant" && Array.isArray(turn.apis)) {
      for (let k = 0; k < turn.apis.length; k++) {
        const api: unknown = turn.apis[k];
        const request = isObject(api) && isObject(api.request) ? api.request : undefined;
        if (
          !isObject(api) || !request || typeof request.api_name !== "string" || !isObject(request.parameters)
        ) {
          const issue = {
            path: `conversation[${i}].apis[${k}].request`,
            message: "API call must have an api_name and parameters",
          };
          out.fail(ref, { ...issue, value: preview(request) });
          return out.result();
        }
        const id = `call_${callNo++}`;
        const call = {
          id,
          type: "function",
          function: { name: request.api_name, arguments: JSON.stringify(request.parameters) },
        };
        messages.push({ role: "assistant", content: "", tool_calls: [call] });
        const failed = api.exception !== null && api.exception !== undefined;
        const content = JSON.stringify(failed ? { error: api.exception } : api.response ?? null);
        messages.push({ role: "tool", content, tool_calls: [], tool_call_id: id, name: request.api_name });
      }
    }
    messages.push({ role: turn.role, content: turn.text, tool_calls: [] });
  }
  const trimmed = trimTrailingUser(messages);
  const tools: ToolSchema[] = [];
  for (const n of candidateTools(conv, options)) {
    const tool = options.catalog.tools.get(n);
    if (!tool) continue;
    const repaired = options.repairSchemas ?? true ? repairToolTalkSchema(tool) : tool;
    tools.push(options.catalog.requiresAuth.has(n) ? withSessionToken(repaired) : repaired);
  }
  const meta: Record<string, unknown> = {
    source: "tooltalk",
    name,
    conversation_id: conv.conversation_id,
    suites_used: conv.suites_used,
    apis_used: conv.apis_used,
  };
  if (trimmed.trimmed > 0) meta.trimmed_trailing_user = trimmed.trimmed;
  out.add(ref, { uuid: ref.id, tools, messages: trimmed.messages, checklists: [], meta });
  return out.result();
}
