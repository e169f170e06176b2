import math

import pytest
import torch
from helpers import assert_same_update, batch_obj, tiny_llama, trainable

from cm2_trainer.config import TrainerConfig
from cm2_trainer.contract import decode_batch
from cm2_trainer.loss import (
    apply_update,
    k3_kl_per_token,
    make_micro_batch,
    make_packed_batch,
    pg_loss_per_token,
    plan_batches,
    token_logprobs,
)
from cm2_trainer.render import RenderedSample, render_sample

CFG = TrainerConfig()


def test_pg_loss_on_policy_is_minus_advantage():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    adv = torch.tensor([1.0, -1.0, 0.0])
    loss, clipped = pg_loss_per_token(logp, logp, adv, CFG)
    assert torch.allclose(loss, -adv) and not clipped.any()


@pytest.mark.parametrize(
    "ratio,adv,expected,was_clipped",
    [
        (1.5, 1.0, -1.2, True),  # positive advantage: ratio capped at 1 + clip_high
        (0.5, 1.0, -0.5, False),  # below 1 - clip_low with A > 0: the pessimistic (unclipped) term wins
        (0.5, -1.0, 0.8, True),  # negative advantage: ratio floored at 1 - clip_low
        (1.5, -1.0, 1.5, False),  # negative advantage, ratio above the clip: unclipped
        (4.0, -1.0, 3.0, True),  # dual clip: loss capped at -A * clip_ratio_c
    ],
)
def test_pg_loss_clipping_and_dual_clip(ratio, adv, expected, was_clipped):
    old = torch.tensor([-1.0])
    loss, clipped = pg_loss_per_token(old + math.log(ratio), old, torch.tensor([adv]), CFG)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert bool(clipped.item()) is was_clipped


def test_k3_kl():
    logp = torch.tensor([-1.0, -1.0, -1.0, 0.0])
    ref = torch.tensor([-1.0, -2.0, 0.0, -100.0])
    kl = k3_kl_per_token(logp, ref)
    assert kl[0].item() == 0.0
    x = torch.tensor([-1.0, 1.0])
    assert torch.allclose(kl[1:3], torch.exp(x) - x - 1)
    assert kl[3].item() == 10.0  # log ratio clamped to -20 (k3 ≈ 19), then the kld clamp to ±10
    assert k3_kl_per_token(torch.tensor([-100.0]), torch.tensor([0.0])).item() == 10.0  # exp(+20) clamped too


def _sample(ids, loss_from, adv=1.0):
    n = len(ids)
    return RenderedSample("e", list(ids), [0] * loss_from + [1] * (n - loss_from), [adv] * n, [None] * n)


def test_token_logprobs_are_the_full_computation_at_the_loss_tokens(tok):
    torch.manual_seed(0)
    model = tiny_llama(len(tok)).double().eval()  # float64: the two computations agree on any CPU's kernels
    ids = torch.randint(3, len(tok), (2, 30))
    samples = [_sample(ids[0].tolist(), 11), _sample(ids[1, :25].tolist(), 20)]  # second row padded
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1)
        full = full.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        part = token_logprobs(model, make_micro_batch(samples, 0, torch.device("cpu")))
    assert part.shape == (19 + 5,) and part.dtype == torch.float64
    torch.testing.assert_close(part, torch.cat([full[0, 10:], full[1, 19:24]]), rtol=1e-10, atol=0)


def test_token_logprobs_report_the_summed_entropy_at_the_loss_tokens(tok):
    torch.manual_seed(1)
    model = tiny_llama(len(tok)).double().eval()
    ids = torch.randint(3, len(tok), (1, 20))
    with torch.no_grad():
        logp_all = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        want = float(-(logp_all.exp() * logp_all).sum(-1)[7:].sum())
        got: list[float] = []
        token_logprobs(model, make_micro_batch([_sample(ids[0].tolist(), 8)], 0, torch.device("cpu")), got)
    assert len(got) == 1 and abs(got[0] - want) < 1e-9 * max(1.0, want)
    assert got[0] > 0


def _group(tok, n=3, prompt=40, seed=0):
    """n samples sharing a `prompt`-token prefix, each with its own continuation of another length, loss
    tokens in two separate spans (an assistant step, a tool result, another step)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, len(tok), (prompt,), generator=g).tolist()
    out = []
    for i in range(n):
        tail = torch.randint(3, len(tok), (12 + 5 * i,), generator=g).tolist()
        mask = [0] * prompt + [1] * 5 + [0] * 4 + [1] * (len(tail) - 9)
        ids = head + tail
        out.append(RenderedSample(f"e{i}", ids, mask, [(-1.0) ** i * (i + 1) for _ in ids], [None] * len(ids)))
    return out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_group_gives_the_same_logprobs_as_separate_rows(tok, impl):
    torch.manual_seed(0)
    model = tiny_llama(len(tok)).double().eval()
    model.config._attn_implementation = impl
    group = _group(tok)
    cpu = torch.device("cpu")
    with torch.no_grad():
        separate = torch.cat([token_logprobs(model, make_micro_batch([s], 0, cpu)) for s in group])
        packed_mb = make_packed_batch(group, 40, None if impl == "sdpa" else torch.float64, cpu)
        packed = token_logprobs(model, packed_mb)
    assert packed_mb.input_ids.shape[1] == 40 + sum(len(s.input_ids) - 40 for s in group)
    assert packed.shape == separate.shape
    # eager attention takes its softmax in float32 even for a float64 model (transformers' Llama), and a packed
    # row sums it over more (masked) columns: float32 agreement, relative, there; float64 agreement for sdpa
    torch.testing.assert_close(packed, separate, rtol=1e-10 if impl == "sdpa" else 1e-6, atol=0)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_packed_update_equals_the_unpacked_update(tok, loss_agg):
    from peft import LoraConfig, get_peft_model

    results = []
    for pack in (8192, 0):
        torch.manual_seed(0)
        base = tiny_llama(len(tok)).double()  # float64: see assert_same_update
        cfg = TrainerConfig(lr=1e-1, kl_coef=0.05, lora_rank=4, lora_alpha=8, pack_max_tokens=pack, loss_agg=loss_agg)
        model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, target_modules=cfg.target_modules, task_type="CAUSAL_LM")
        )
        before = trainable(model)
        # plain SGD: the test is about the gradient; Adam's first steps are ~lr * sign(g), which turns rounding
        # noise in near-zero gradient entries into differences the size of the step
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        group = _group(tok, n=4) + _group(tok, n=1, seed=1)  # a group of 4 and a lone sample
        plan = plan_batches(group, cfg, 0, 0, torch.device("cpu"), model)
        for _ in range(2):  # the second update has a KL to the reference
            m = apply_update(model, opt, group, cfg, seed=0, pad_id=0, device=torch.device("cpu"))
        results.append((len(plan[0]), m, before, trainable(model)))
    (n_packed, m1, w0, w1), (n_plain, m2, _, w2) = results
    assert (n_packed, n_plain) == (2, 5)  # one packed row + the lone sample, vs one row each
    assert m1["tokens"] == m2["tokens"] and m2["kl"] > 0
    for k in ("loss", "pg_loss", "kl", "grad_norm"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-7, abs=1e-15), k
    assert_same_update(w0, w1, w2)


def test_packs_respect_the_token_budget(tok):
    group = _group(tok, n=4)  # 40-token prompt, continuations of 12, 17, 22, 27 tokens
    model = tiny_llama(len(tok))
    cfg = TrainerConfig(pack_max_tokens=40 + 12 + 17 + 22)
    plan = plan_batches(group, cfg, 0, 0, torch.device("cpu"), model)
    lengths = sorted(mb.input_ids.shape[1] for mb in plan[0])
    assert lengths == [67, 91]  # prompt + 3 continuations, then the fourth alone (an ordinary row)
    model.config._attn_implementation = "flash_attention_2"  # no dense custom mask: one row per sample
    assert len(plan_batches(group, cfg, 0, 0, torch.device("cpu"), model)[0]) == 4


def _setup(tok, adv=(1.0, 1.0), lr=1e-2, dtype=torch.float32, sgd=False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = tiny_llama(len(tok)).to(dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = TrainerConfig(lr=lr, kl_coef=0.0, lora_rank=4, lora_alpha=8, weight_decay=0.0)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trained, lr=cfg.lr) if sgd else torch.optim.AdamW(trained, lr=cfg.lr)
    rendered = [render_sample(s, tok) for s in decode_batch(batch_obj(advantages=adv)).samples]
    return model, opt, cfg, rendered


def _mean_loss_token_logprob(model, rendered):
    total = n = 0.0
    model.eval()
    with torch.no_grad():
        for r in rendered:
            lp = token_logprobs(model, make_micro_batch([r], 0, torch.device("cpu")))
            total += float(lp.sum())
            n += lp.numel()
    return total / n


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_update_moves_logprob_of_trained_tokens_with_the_advantage(tok, sign):
    model, opt, cfg, rendered = _setup(tok, adv=(sign, sign))
    before = _mean_loss_token_logprob(model, rendered)
    m = apply_update(model, opt, rendered, cfg, seed=0, pad_id=tok.pad_token_id, device=torch.device("cpu"))
    after = _mean_loss_token_logprob(model, rendered)
    assert sign * (after - before) > 1e-3, (before, after)
    assert m["tokens"] == sum(r.num_loss_tokens for r in rendered) and m["grad_norm"] > 0
    assert m["pg_loss"] == pytest.approx(-sign, rel=1e-5)  # on-policy: ratio 1, loss = -A
    assert m["optimizer_steps"] == 1


def test_several_mini_batches_clip_against_old_logprobs(tok):
    model, opt, cfg, rendered = _setup(tok, adv=(1.0, 1.0), lr=5e-2)
    cfg = cfg.replace(mini_batches=2, micro_batch_size=1)
    m = apply_update(model, opt, rendered, cfg, seed=0, pad_id=tok.pad_token_id, device=torch.device("cpu"))
    assert m["optimizer_steps"] == 2
    assert m["clip_frac"] > 0  # the second mini-batch sees a policy moved by the first step
    assert m["pg_loss"] >= -(1.0 + cfg.clip_high) - 1e-6  # clipping bounds the gain per token


def test_kl_to_reference_is_zero_at_start_and_positive_after_a_step(tok):
    model, opt, cfg, rendered = _setup(tok, adv=(1.0, 1.0))
    cfg = cfg.replace(kl_coef=0.1)
    m1 = apply_update(model, opt, rendered, cfg, seed=0, pad_id=tok.pad_token_id, device=torch.device("cpu"))
    assert m1["kl"] == pytest.approx(0.0, abs=1e-7)  # LoRA B starts at 0: policy == reference
    m2 = apply_update(model, opt, rendered, cfg, seed=0, pad_id=tok.pad_token_id, device=torch.device("cpu"))
    assert m2["kl"] > 0 and m2["loss"] == pytest.approx(m2["pg_loss"] + 0.1 * m2["kl"])


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batching_and_padding_do_not_change_the_update(tok, loss_agg):
    """Either aggregation over the mini-batch: one padded micro-batch of 2 == two micro-batches of 1."""
    grads = []
    for mbs in (1, 2):
        # float64 and SGD: see assert_same_update and test_packed_update_equals_the_unpacked_update
        model, opt, cfg, rendered = _setup(tok, adv=(1.0, -0.5), lr=1e-1, dtype=torch.float64, sgd=True)
        cfg = cfg.replace(micro_batch_size=mbs, kl_coef=0.01, loss_agg=loss_agg)
        before = trainable(model)
        m = apply_update(model, opt, rendered, cfg, seed=0, pad_id=tok.pad_token_id, device=torch.device("cpu"))
        grads.append((m, before, trainable(model)))
    (m1, w0, w1), (m2, _, w2) = grads
    assert len({len(r.input_ids) for r in rendered}) == 2  # different lengths: the batch of 2 is padded
    assert m1["tokens"] == m2["tokens"]
    assert m1["pg_loss"] == pytest.approx(m2["pg_loss"], rel=1e-7)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-7)
    assert_same_update(w0, w1, w2)


def test_rollout_importance_weights_are_truncated_at_the_cap(tok):
    model, opt, cfg, rendered = _setup(tok, adv=(1.0, 1.0))
    for r in rendered:  # serving log-probs far below the trainer's: the weight exp(old - rollout) hits the cap
        r.rollout_logprobs = [-50.0 if m else None for m in r.loss_mask]
    m = apply_update(
        model,
        opt,
        rendered,
        cfg.replace(rollout_is_cap=2.0),
        seed=0,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
    )
    assert m["pg_loss"] == pytest.approx(-2.0, rel=1e-5)
    # and unknown log-probs weigh 1
    model, opt, cfg, rendered = _setup(tok, adv=(1.0, 1.0))
    m = apply_update(
        model,
        opt,
        rendered,
        cfg.replace(rollout_is_cap=2.0),
        seed=0,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
    )
    assert m["pg_loss"] == pytest.approx(-1.0, rel=1e-5)


def _two_lengths(tok):
    """Two trajectories with 2 and 6 loss tokens (different prompts: no packing), advantages +1 and +0.5."""
    g = torch.Generator().manual_seed(3)
    short = torch.randint(3, len(tok), (12,), generator=g).tolist()
    long = torch.randint(3, len(tok), (20,), generator=g).tolist()
    return [
        RenderedSample("short", short, [0] * 10 + [1] * 2, [1.0] * 12, [None] * 12),
        RenderedSample("long", long, [0] * 14 + [1] * 6, [0.5] * 20, [None] * 20),
    ]


@pytest.mark.parametrize(
    "mode, weights",
    [
        ("token-mean", [1 / 8] * 2 + [1 / 8] * 6),  # every loss token of the mini-batch alike
        ("seq-mean-token-mean", [1 / (2 * 2)] * 2 + [1 / (2 * 6)] * 6),  # mean per trajectory, then over the 2
    ],
)
def test_loss_aggregation_gives_the_hand_computed_gradient_weights(tok, mode, weights):
    """On-policy (ratio 1, no KL) the loss is Σ_t a_t (-A_t) logp_t: the update must be SGD on exactly that."""
    from peft import LoraConfig, get_peft_model

    samples = _two_lengths(tok)
    cfg = TrainerConfig(
        lr=1e-1, kl_coef=0.0, lora_rank=4, lora_alpha=8, weight_decay=0.0, max_grad_norm=1e9, loss_agg=mode
    )
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_llama(len(tok)).double(),
        LoraConfig(r=4, lora_alpha=8, target_modules=cfg.target_modules, task_type="CAUSAL_LM"),
    )
    with torch.no_grad():  # LoRA B starts at 0, so A gets no gradient: give B a value to see both
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    cpu = torch.device("cpu")
    # the expected gradient, from the hand-written weights
    model.zero_grad()
    logp = torch.cat([token_logprobs(model, make_micro_batch([s], 0, cpu)) for s in samples])
    adv = torch.tensor([1.0] * 2 + [0.5] * 6, dtype=torch.float64)
    (torch.tensor(weights, dtype=torch.float64) * -adv * logp).sum().backward()
    expected = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(list(params.values()), lr=cfg.lr)
    m = apply_update(model, opt, samples, cfg, seed=0, pad_id=0, device=cpu)
    for n, p in params.items():
        torch.testing.assert_close((before[n] - p.detach()) / cfg.lr, expected[n], rtol=1e-9, atol=1e-14)
    assert m["pg_loss"] == pytest.approx(float((torch.tensor(weights, dtype=torch.float64) * -adv).sum()))


def test_rollout_correction_vetoes_a_trajectory_and_caps_a_token(tok):
    """Trajectory `short`: one token's serving log-prob is 5 nats below the trainer's (weight e^5, capped at 2),
    the other agrees (weight 1). Trajectory `long`: one token's serving log-prob is 20 nats above (weight e^-20 <
    1e-4): the whole trajectory is vetoed, so the update is the one without its policy gradient."""
    from peft import LoraConfig, get_peft_model

    cpu = torch.device("cpu")
    updates = []
    for drop_long in (False, True):
        samples = _two_lengths(tok)
        cfg = TrainerConfig(lr=1e-1, kl_coef=0.0, lora_rank=4, lora_alpha=8, weight_decay=0.0, max_grad_norm=1e9)
        torch.manual_seed(0)
        model = get_peft_model(
            tiny_llama(len(tok)).double(),
            LoraConfig(r=4, lora_alpha=8, target_modules=cfg.target_modules, task_type="CAUSAL_LM"),
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
            old = [token_logprobs(model, make_micro_batch([s], 0, cpu)).tolist() for s in samples]
        for s, lp, shift in zip(samples, old, ([-5.0, 0.0], [20.0] + [0.0] * 5), strict=True):
            at = [t for t in range(1, len(s.input_ids)) if s.loss_mask[t]]
            for t, v, d in zip(at, lp, shift, strict=True):
                s.rollout_logprobs[t] = v + d
        if drop_long:  # the reference: the long trajectory contributes no policy gradient
            samples[1].rollout_logprobs = [None] * len(samples[1].input_ids)
            samples[1].advantages = [0.0] * len(samples[1].input_ids)
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        m = apply_update(model, torch.optim.SGD(params, lr=cfg.lr), samples, cfg, seed=0, pad_id=0, device=cpu)
        updates.append((m, [b - p.detach() for b, p in zip(before, params, strict=True)]))
    (m, delta), (_, delta_ref) = updates
    for a, b in zip(delta, delta_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    # token-mean over all 8 tokens (the vetoed trajectory's still count): -(2 + 1) / 8
    assert m["pg_loss"] == pytest.approx(-3 / 8, rel=1e-6)  # serving log-probs travel as float32
    assert m["is_vetoed_share"] == 0.5
    assert m["is_mean_weight"] == pytest.approx((2 + 1 + math.exp(-20) + 5) / 8, rel=1e-6)
    assert any(float(d.abs().max()) > 0 for d in delta)


def test_packed_and_padded_updates_record_the_same_tokens(tok):
    """The per-token record (update.token_record of loss.TokenLog) does not depend on the layout: same tokens, steps
    and weights; `old` is the policy before the update, for the second mini-batch too; weights are the cap's."""
    from peft import LoraConfig, get_peft_model

    from cm2_trainer.loss import TokenLog
    from cm2_trainer.update import token_record

    cpu = torch.device("cpu")
    runs = []
    for pack in (8192, 0):
        torch.manual_seed(0)
        cfg = TrainerConfig(
            lr=1e-1, kl_coef=0.0, lora_rank=4, lora_alpha=8, pack_max_tokens=pack, mini_batches=2, rollout_is_cap=2.0
        )
        model = get_peft_model(
            tiny_llama(len(tok)).double(),  # float64: see assert_same_update
            LoraConfig(r=4, lora_alpha=8, target_modules=cfg.target_modules, task_type="CAUSAL_LM"),
        )
        group = _group(tok, n=4) + _group(tok, n=1, seed=1)
        for s in group:  # two assistant steps (messages 3 and 5), serving log-probs on all but the last token
            start = s.loss_mask.index(1)
            s.message_index = [-1] * start + [3] * 5 + [-1] * 4 + [5] * (len(s.input_ids) - start - 9)
            s.rollout_logprobs = [-2.0 - t % 7 if m else None for t, m in enumerate(s.loss_mask)]
            s.rollout_logprobs[-1] = None
        model.eval()
        with torch.no_grad():
            before = [token_logprobs(model, make_micro_batch([s], 0, cpu)).tolist() for s in group]
        n_micro = sum(len(mini) for mini in plan_batches(group, cfg, 0, 0, cpu, model))
        log = TokenLog(group)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        m = apply_update(model, opt, group, cfg, seed=0, pad_id=0, device=cpu, token_log=log)
        assert m["optimizer_steps"] == 2
        runs.append((n_micro, log, token_record(log, tok, cfg), before, m))
    (n_packed, log_p, rec_p, before, m_p), (n_plain, log_u, rec_u, _, m_u) = runs
    assert n_packed < n_plain == 5
    assert (rec_p["isCap"], rec_p["truncated"]) == (2.0, False) and len(rec_p["samples"]) == 5
    for k, (s, sp, su) in enumerate(zip(group, rec_p["samples"], rec_u["samples"], strict=True)):
        at = [t for t in range(1, len(s.input_ids)) if s.loss_mask[t]]
        assert sp["vetoed"] is su["vetoed"] is False
        assert [st["messageIndex"] for st in sp["steps"]] == [st["messageIndex"] for st in su["steps"]] == [3, 5]
        assert [t for st in sp["steps"] for t in st["tokenIds"]] == [s.input_ids[t] for t in at]
        for a, b in zip(sp["steps"], su["steps"], strict=True):
            assert {f: a[f] for f in ("tokens", "tokenIds", "advantage", "rolloutLogprob")} == {
                f: b[f] for f in ("tokens", "tokenIds", "advantage", "rolloutLogprob")
            }
            assert a["tokens"] == [tok.decode([t]) for t in a["tokenIds"]]
            for f in ("oldLogprob", "isWeight"):  # rounded to 5 digits: a last digit may round either way
                assert a[f] == pytest.approx(b[f], rel=1e-4), f
        # unrounded: the same float64 numbers, and old == the policy before the update
        p, u = log_p.stats(k), log_u.stats(k)
        assert p.positions == u.positions == at
        want = [
            1.0 if r is None else min(math.exp(o - r), 2.0) for o, r in zip(before[k], u.rollout_logprobs, strict=True)
        ]
        for got, ref in ((p.old_logprobs, u.old_logprobs), (p.old_logprobs, before[k]), (p.is_weights, want)):
            torch.testing.assert_close(_f64(got), _f64(ref), rtol=1e-9, atol=0)
        torch.testing.assert_close(_f64(p.is_weights), _f64(u.is_weights), rtol=1e-9, atol=0)
    stats = [log_u.stats(k) for k in range(len(group))]
    weights = [w for st in stats for w, r in zip(st.is_weights, st.rollout_logprobs, strict=True) if r is not None]
    assert 2.0 in weights and min(weights) < 1.0
    assert sum(weights) / len(weights) == pytest.approx(m_u["is_mean_weight"], rel=1e-9)
    assert m_p["is_mean_weight"] == pytest.approx(m_u["is_mean_weight"], rel=1e-9)
    # a bounded record stops adding samples before the cap
    first = sum(len(st["tokenIds"]) for st in rec_u["samples"][0]["steps"])
    cut = token_record(log_u, tok, cfg, max_tokens=first + 1)
    assert cut["truncated"] is True and [s["episodeId"] for s in cut["samples"]] == ["e0"]


def _f64(v):
    return torch.tensor(v, dtype=torch.float64)
