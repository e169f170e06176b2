/**
 * A scripted labeler role for labeling tests, on top of the scripted server TEST DOUBLE. It answers
 * each call with the rule-derived checklist of the record being labeled (core/importers
 * `deriveRuleChecklist`, in the labeler's turn-block form), optionally altered per (uuid, attempt)
 * to play an invalid or repairable answer, or replaced by a fault. The record, variant and attempt
 * are read from the call's `Idempotency-Key` (`label/<version>/<uuid>/v<k>/attempt-<a>`).
 *
 * @module
 */
import { deriveRuleChecklist } from "../../core/importers/mod.ts";
import { turnBlocksFromVariant } from "../../core/labeling.ts";
import type { TrajectoryRecord, TurnBlock } from "../../core/records.ts";
import type { ParsedChatRequest, ScriptedReply, ScriptHandler } from "../scripted_server.ts";

/** What a labeler call is about, from its idempotency key. */
export interface LabelCallIdentity {
  promptVersion: string;
  uuid: string;
  variant: number;
  attempt: number;
}

/** Parses `label/<version>/<uuid>/v<k>/attempt-<a>`; undefined for other keys. */
export function labelCallIdentity(key: string | undefined): LabelCallIdentity | undefined {
  const m = /^label\/([^/]+)\/(.+)\/v(\d+)\/attempt-(\d+)$/.exec(key ?? "");
  if (!m) return undefined;
  return { promptVersion: m[1]!, uuid: m[2]!, variant: Number(m[3]), attempt: Number(m[4]) };
}

/** Returns a reply for a call instead of the valid checklist (a fault, or altered blocks as JSON). */
export type LabelScript = (
  id: LabelCallIdentity,
  blocks: TurnBlock[],
  req: ParsedChatRequest,
) => ScriptedReply | undefined;

/** The labeler role: valid rule-derived checklists unless `script` answers otherwise. */
export function ruleLabeler(records: readonly TrajectoryRecord[], script?: LabelScript): ScriptHandler {
  const byUuid = new Map(records.map((r) => [r.uuid, r]));
  return (req: ParsedChatRequest): ScriptedReply => {
    const id = labelCallIdentity(req.headers["idempotency-key"]);
    const record = id ? byUuid.get(id.uuid) : undefined;
    if (!id || !record) return { fault: "500", status: 400, message: "Unknown record (scripted labeler)" };
    const blocks = turnBlocksFromVariant(deriveRuleChecklist(record));
    return script?.(id, structuredClone(blocks), req) ?? { json: blocks };
  };
}
