import warnings

import pytest
from helpers import TOOLS, batch_obj

from cm2_trainer.contract import decode_batch
from cm2_trainer.render import TemplateError, TemplateToolsIgnored, render_sample, template_messages


def _sample(**kw):
    return decode_batch(batch_obj(**kw)).samples[0]


def _spans(mask):
    spans, start = [], None
    for k, m in enumerate(mask + [0]):
        if m and start is None:
            start = k
        if not m and start is not None:
            spans.append((start, k))
            start = None
    return spans


def test_template_path_reproduces_the_chat_template_and_masks_assistant_tokens(tok):
    s = _sample()
    r = render_sample(s, tok)
    full = tok.apply_chat_template(template_messages(s.messages), tools=TOOLS, return_dict=False)
    # the whole transcript ends with an assistant message: the sequence is the template minus the final "\n"
    assert r.input_ids == full[: len(r.input_ids)] and full[len(r.input_ids) :] == tok.encode("\n")
    texts = [tok.decode(r.input_ids[a:b]) for a, b in _spans(r.loss_mask)]
    assert texts == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is sunny in Paris.<|im_end|>",
    ]
    assert {a for a, m in zip(r.advantages, r.loss_mask, strict=True) if m} == {0.5}
    assert all(a == 0.0 for a, m in zip(r.advantages, r.loss_mask, strict=True) if not m)
    # the context before the first assistant message is exactly the generation prompt
    prompt = tok.apply_chat_template(
        template_messages(s.messages[:2]), tools=TOOLS, add_generation_prompt=True, return_dict=False
    )
    assert r.input_ids[: len(prompt)] == prompt and r.loss_mask.index(1) == len(prompt)


def test_each_token_knows_the_assistant_message_it_renders(tok):
    r = render_sample(_sample(), tok)
    assert len(r.message_index) == len(r.input_ids)
    spans = _spans(r.loss_mask)
    assert [set(r.message_index[a:b]) for a, b in spans] == [{2}, {4}]  # the loss tokens: their message
    owned = {i: tok.decode([t for t, m in zip(r.input_ids, r.message_index, strict=True) if m == i]) for i in (2, 4)}
    assert owned[4] == "It is sunny in Paris.<|im_end|>"
    assert owned[2].startswith("<tool_call>") and owned[2].endswith("</tool_call><|im_end|>")
    context = tok.decode([t for t, m in zip(r.input_ids, r.message_index, strict=True) if m == -1])
    assert context.startswith("<|im_start|>system") and context.endswith("<|im_start|>assistant\n")


def test_untrained_assistant_messages_are_context(tok):
    obj = batch_obj()
    obj["samples"][0]["advantages"] = [{"messageIndex": 2, "advantage": 1.0}]
    r = render_sample(decode_batch(obj).samples[0], tok)
    assert len(_spans(r.loss_mask)) == 1
    assert tok.decode(r.input_ids).endswith("</tool_call><|im_end|>")  # cut after the last loss token


def test_completion_token_ids_are_used_verbatim(tok):
    obj = batch_obj()
    ids = tok.encode("<tool_call>{'weird': 'but what the server returned'}</tool_call><|im_end|>")
    obj["samples"][0]["completions"] = [{"messageIndex": 2, "tokenIds": ids, "logprobs": [-0.5] * len(ids)}]
    r = render_sample(decode_batch(obj).samples[0], tok)
    a, b = _spans(r.loss_mask)[0]
    assert r.input_ids[a:b] == ids
    assert r.rollout_logprobs[a:b] == [-0.5] * len(ids)
    assert tok.decode(r.input_ids[b : b + 1]) == "\n"  # template glue after <|im_end|> is context


def test_length_cut_completion_does_not_train_end_of_turn(tok):
    obj = batch_obj()
    ids = tok.encode('<tool_call>{"name": "get_wea')
    obj["samples"][0]["completions"] = [{"messageIndex": 2, "tokenIds": ids}]
    r = render_sample(decode_batch(obj).samples[0], tok)
    a, b = _spans(r.loss_mask)[0]
    assert r.input_ids[a:b] == ids
    assert tok.decode(r.input_ids[b : b + 2]) == "<|im_end|>\n" and r.loss_mask[b] == 0


def test_not_prefix_stable_template_raises_naming_sample_and_message(tok):
    from helpers import CHATML_TOOLS_TEMPLATE

    # earlier assistant turns are rewritten once they are not last (like templates that drop old reasoning)
    unstable = CHATML_TOOLS_TEMPLATE.replace(
        "{{ m.content }}{% for c in", "{{ m.content if loop.last else '' }}{% if loop.last %}{% for c in"
    ).replace("{% endfor %}<|im_end|>{{ '\\n' }}{% else %}", "{% endfor %}{% endif %}<|im_end|>{{ '\\n' }}{% else %}")
    assert unstable != CHATML_TOOLS_TEMPLATE
    with pytest.raises(TemplateError, match=r"not prefix-stable for sample 'r1/it-0/task-0/ep-0'.*messages\[4\]"):
        render_sample(_sample(), tok, chat_template=unstable)


def test_token_ids_outside_the_vocabulary_are_rejected(tok):
    obj = batch_obj()
    obj["samples"][0]["completions"] = [{"messageIndex": 2, "tokenIds": [5, 99999]}]
    with pytest.raises(TemplateError, match="token id 99999"):
        render_sample(decode_batch(obj).samples[0], tok, vocab_size=len(tok))


# -- the real SmolLM2 tokenizer (GGUF) -----------------------------------------------------------------------
def test_smollm2_transcript_with_tool_call_reproduces_the_chat_template_prompt(gguf_tok):
    tok = gguf_tok
    s = decode_batch(batch_obj(completions=True, tokenizer=tok)).samples[0]
    with pytest.warns(TemplateToolsIgnored):  # SmolLM2's template has no tools section
        r = render_sample(s, tok)
    msgs = template_messages(s.messages)

    def tmpl(upto, gen):
        return tok.apply_chat_template(msgs[:upto], tools=TOOLS, add_generation_prompt=gen, return_dict=False)

    p2, f2, p4, f4 = tmpl(2, True), tmpl(3, False), tmpl(4, True), tmpl(5, False)
    call_ids = s.completions[2].token_ids
    # prompt before the tool call, the verbatim tool call, the template's context, the template's reply
    expected = (
        p2
        + call_ids
        + f2[len(p2) :][len(tok.encode("<|im_end|>", add_special_tokens=False)) :]
        + p4[len(f2) :]
        + f4[len(p4) :]
    )
    assert r.input_ids == expected[: len(r.input_ids)]
    assert tok.decode(r.input_ids[: len(p2)]) == tok.apply_chat_template(
        msgs[:2], add_generation_prompt=True, tokenize=False
    )
    texts = [tok.decode(r.input_ids[a:b]) for a, b in _spans(r.loss_mask)]
    assert texts == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is sunny in Paris.<|im_end|>",
    ]
    ctx = tok.decode(r.input_ids[_spans(r.loss_mask)[0][1] : _spans(r.loss_mask)[1][0]])
    assert ctx == '\n<|im_start|>tool\n{"temp_c": 21, "sky": "clear"}<|im_end|>\n<|im_start|>assistant\n'


def test_smollm2_template_cannot_render_tool_calls_without_token_ids(gguf_tok):
    s = decode_batch(batch_obj()).samples[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TemplateToolsIgnored)
        with pytest.raises(TemplateError, match="drops the tool call 'get_weather'.*messages\\[2\\]"):
            render_sample(s, gguf_tok)


def test_smollm2_with_the_serving_template_matches_the_policy_server_prompts(gguf_tok):
    """Training renders what serve.py rendered: for every assistant message, the context before it equals the
    server's prompt for the messages before it (same normalisation, same tool-aware template)."""
    from cm2_trainer.chat import TOOL_CHAT_TEMPLATE, normalize_messages, normalize_tools, serving_chat_template

    tmpl = serving_chat_template(gguf_tok)
    assert tmpl == TOOL_CHAT_TEMPLATE  # SmolLM2's own template ignores tools
    s = _sample()  # no completions: the tool call is rendered by the template
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemplateToolsIgnored)
        r = render_sample(s, gguf_tok, chat_template=tmpl)
    spans = _spans(r.loss_mask)
    for (start, _), i in zip(spans, (2, 4), strict=False):
        prompt = gguf_tok.apply_chat_template(
            normalize_messages(s.messages[:i]),
            tools=normalize_tools(s.tools),
            chat_template=tmpl,
            add_generation_prompt=True,
            return_dict=False,
        )
        assert r.input_ids[:start] == list(prompt)
    call = gguf_tok.decode(r.input_ids[spans[0][0] : spans[0][1]])
    assert call == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert "# Tools" in gguf_tok.decode(r.input_ids[: spans[0][0]])
