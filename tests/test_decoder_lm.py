"""DecoderLM: parity with Llama, KV cache, save/load, padding-free attention, MoE router terms."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trainformers.losses import compute_router_auxiliary_loss
from trainformers.models import DecoderLM, DecoderLMConfig, from_llama_state_dict
from trainformers.models.decoder_lm import RouterStats

V = 64


def tiny(seed=0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    config = DecoderLMConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **overrides,
    )
    return DecoderLM(config).eval()


def test_parity_with_llama_given_the_same_weights():
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            attention_dropout=0.0,
        )
    ).eval()
    ours = DecoderLM(
        DecoderLMConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    ).eval()
    missing, unexpected = ours.load_state_dict(from_llama_state_dict(llama.state_dict()), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    ids = torch.randint(0, V, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-5)
        a, b = ours(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)


def greedy_by_hand(model: DecoderLM, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence every step: no cache, no `generate()`."""
    for _ in range(steps):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("left_pad", [0, 3], ids=["unpadded", "left-padded"])
def test_kv_cache_generation_equals_full_recompute(left_pad):
    # untied: a random tied model's greedy choice is mostly its input token, whatever the context
    model = tiny(tie_word_embeddings=False)
    prompt = torch.randint(1, V, (2, 6))
    mask = torch.ones_like(prompt)
    prompt[1, :left_pad], mask[1, :left_pad] = 0, 0  # row 1 is a shorter prompt, padded on the left
    lengths: list[int] = []  # tokens each forward embeds: with the cache working, the prompt then 1 per step
    hook = model.embed_tokens.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        cached = model.generate(
            prompt,
            attention_mask=mask if left_pad else None,
            max_new_tokens=12,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    hook.remove()
    assert lengths == [6] + [1] * 11
    with torch.no_grad():
        for row in range(2):  # each row alone, unpadded: what the padded batch must reproduce
            alone = greedy_by_hand(model, prompt[row : row + 1, mask[row].bool()], 12)
            assert torch.equal(cached[row : row + 1, left_pad if row else 0 :], alone)


@pytest.mark.parametrize("left_pad", [0, 3], ids=["unpadded", "left-padded"])
def test_kv_cache_sampling_equals_sampling_without_cache(left_pad):
    # the same seed draws the same tokens only if the cached logits equal the recomputed ones; a wide
    # init makes the distribution peaked enough that a wrong context changes the draws
    model = tiny(tie_word_embeddings=False, initializer_range=0.5)
    prompt = torch.randint(1, V, (3, 5))
    mask = torch.ones_like(prompt)
    prompt[2, :left_pad], mask[2, :left_pad] = 0, 0
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(
                model.generate(
                    prompt,
                    attention_mask=mask if left_pad else None,
                    max_new_tokens=10,
                    do_sample=True,
                    top_k=0,
                    temperature=1.0,
                    use_cache=use_cache,
                    pad_token_id=0,
                )
            )
    assert torch.equal(runs[0], runs[1])
    assert len({tuple(row[5:].tolist()) for row in runs[0]}) > 1  # really sampled: the rows differ


def test_forward_returns_the_cache_under_the_installed_name_without_a_deprecation_warning():
    import logging

    from transformers.utils import logging as hf_logging

    from trainformers.models.decoder_lm import CACHE_FIELD

    hf_logging.warning_once.cache_clear()  # a warning already given in this process would not repeat
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    try:
        model = tiny()
        with torch.no_grad():
            out = model(torch.randint(0, V, (1, 4)), use_cache=True)
            cache = out[CACHE_FIELD]
            assert cache.get_seq_length() == 4
            step = model(torch.randint(0, V, (1, 1)), use_cache=True, **{CACHE_FIELD: cache})
            model.generate(torch.randint(1, V, (1, 4)), max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        root.removeHandler(handler)
    assert step[CACHE_FIELD] is cache and cache.get_seq_length() == 5  # the cache passed in was extended
    assert not [m for m in seen if "deprecated" in m], seen


def test_save_and_auto_reload_identical_logits(tmp_path):
    model = tiny(num_experts=4, num_experts_per_tok=2, moe_layers=[1])
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "trainformers_decoder"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DecoderLM)
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()  # tied


def test_padding_free_rows_attend_within_documents():
    model = tiny()
    docs = [torch.randint(0, V, (n,)) for n in (5, 3, 7)]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = model(ids, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([model(d[None], use_cache=False).logits[0] for d in docs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_labels_loss_and_num_items():
    model = tiny()
    ids = torch.randint(0, V, (2, 8))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels, use_cache=False)
    logits = out.logits[:, :-1].reshape(-1, V)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    summed = model(ids, labels=labels, num_items_in_batch=100, use_cache=False).loss
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(summed, expected * n / 100)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny(num_experts=4, num_experts_per_tok=2).train()
        if checkpointing:  # transformers 5.24 renamed gradient_checkpointing_enable (deprecated there)
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            assert model.gradient_checkpointing
        ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "layers.0.mlp.router.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_router_losses_equal_hand_computed_values():
    # 2 experts; fractions 3/4, 1/4; mean probabilities 0.6, 0.4; z = 2.0
    stats = [
        RouterStats(torch.tensor([0.75, 0.25]), torch.tensor([0.6, 0.4]), torch.tensor(2.0)),
        {"fraction": torch.tensor([0.5, 0.5]), "probability": torch.tensor([0.5, 0.5]), "z": torch.tensor(1.0)},
    ]
    total, terms = compute_router_auxiliary_loss(stats, load_balance_coef=0.1, auxiliary_coef=1.0, z_loss_coef=0.01)
    lb = (2 * (0.75 * 0.6 + 0.25 * 0.4) + 2 * (0.5 * 0.5 + 0.5 * 0.5)) / 2  # C * sum f_i P_i, mean over layers
    aux = ((0.25**2 + 0.25**2) + 0.0) / 2
    z = (2.0 + 1.0) / 2
    assert terms["load_balance_loss"].item() == pytest.approx(lb)
    assert terms["auxiliary_loss"].item() == pytest.approx(aux)
    assert terms["router_z_loss"].item() == pytest.approx(z)
    assert total.item() == pytest.approx(0.1 * lb + 1.0 * aux + 0.01 * z)


def test_router_stats_from_a_layer_match_a_hand_computation():
    model = tiny(num_experts=4, num_experts_per_tok=2, moe_layers=[0])
    moe = model.layers[0].mlp
    x = torch.randn(2, 5, 32)
    _, stats = moe(x)
    logits = moe.router(x.reshape(10, 32))
    probs = logits.softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    counts = torch.bincount(chosen.flatten(), minlength=4).float()
    torch.testing.assert_close(stats.fraction, counts / 20)
    torch.testing.assert_close(stats.probability, probs.mean(0))
    torch.testing.assert_close(stats.z, torch.logsumexp(logits, -1).pow(2).mean())


def test_moe_forward_reports_terms_and_adds_them_to_the_loss():
    model = tiny(num_experts=4, num_experts_per_tok=2, load_balance_coef=0.5, z_loss_coef=0.0)
    ids = torch.randint(0, V, (2, 8))
    out = model(ids, labels=ids, use_cache=False)
    terms = out.loss_terms
    assert set(terms) >= {"lm_loss", "load_balance_loss", "auxiliary_loss", "router_z_loss", "expert_usage_max"}
    torch.testing.assert_close(out.loss.detach(), terms["lm_loss"] + 0.5 * terms["load_balance_loss"])


def _expert_usage(load_balance_coef: float) -> float:
    """Busiest expert's share (mean of the last 10 steps) after a toy run from an uneven router."""
    torch.manual_seed(0)
    model = tiny(
        num_experts=4, num_experts_per_tok=1, load_balance_coef=load_balance_coef, z_loss_coef=0.0, moe_layers=[1]
    ).train()
    with torch.no_grad():
        router = model.layers[1].mlp.router.weight
        router.normal_(0, 0.3)
        router[0] += 0.3  # expert 0 starts favoured
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    usage = []
    for _ in range(40):
        ids = torch.randint(0, V, (8, 16), generator=g)
        out = model(ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        usage.append(float(out.loss_terms["expert_usage_max"]))
    return sum(usage[-10:]) / 10


def test_load_balancing_makes_expert_usage_more_even():
    # measured: without the term the router collapses onto one expert (share 1.0); with it ~0.36
    unbalanced, balanced = _expert_usage(0.0), _expert_usage(1.0)
    assert unbalanced > 0.8 and balanced < 0.5


def test_capacity_factor_caps_tokens_per_expert():
    model = tiny(num_experts=2, num_experts_per_tok=1, capacity_factor=0.5, moe_layers=[0])
    moe = model.layers[0].mlp
    calls = []
    for expert in moe.experts:
        expert.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    moe(torch.randn(1, 16, 32))
    assert max(calls) <= math.ceil(0.5 * 16 * 1 / 2)


def test_presets():
    config = DecoderLMConfig.preset("small", vocab_size=100)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 6)
    with pytest.raises(ValueError, match="unknown DecoderLM preset"):
        DecoderLMConfig.preset("huge")


def test_trainer_logs_each_router_term(tmp_path):
    from conftest import PadCollator, lm_rows, make_args

    from trainformers import Trainer

    model = tiny(num_experts=4, num_experts_per_tok=2).train()
    t = Trainer(
        model, make_args(tmp_path, max_steps=2, logging_steps=1), data_collator=PadCollator(), train_dataset=lm_rows()
    )
    t.train()
    rows = [r for r in t.state.log_history if "loss" in r]
    assert len(rows) == 2
    for row in rows:
        assert {"lm_loss", "load_balance_loss", "router_z_loss", "auxiliary_loss", "expert_usage_max"} <= set(row)
        assert row["lm_loss"] < row["loss"]  # the weighted router terms are part of the loss


def test_moe_yaml_example_builds_the_experts():
    from pathlib import Path

    from trainformers.config import load_config
    from trainformers.data import default_corpus, train_tokenizer
    from trainformers.run import build_model

    config = load_config(Path(__file__).parents[1] / "examples" / "moe_small.yaml")
    model = build_model(config, train_tokenizer(default_corpus()[:5], 300))
    assert [type(b.mlp).__name__ for b in model.layers] == ["SwiGLU", "MixtureOfExperts"] * 2
    assert model.config.load_balance_coef == 0.01 and model.config.num_experts_per_tok == 2
