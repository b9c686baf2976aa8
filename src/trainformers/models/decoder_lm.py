"""DecoderLM: a small, readable decoder-only transformer that plugs into Hugging Face.

Token embeddings -> N pre-norm blocks (RMSNorm, rotary grouped-query attention through
`scaled_dot_product_attention`, SwiGLU MLP or a top-k mixture of experts) -> RMSNorm -> LM head.
Registered with `AutoConfig`/`AutoModelForCausalLM`; `generate()` works with a KV cache. The
layout and weights follow Llama's, so a `LlamaForCausalLM` of the same shape maps onto it
(`from_llama_state_dict`). Shapes: B batch, T new tokens, S all keys (cache + new), H heads,
K key/value heads, D head size, E experts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import transformers
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from trainformers.config import MODEL_PRESETS
from trainformers.losses import compute_router_auxiliary_loss, lm_loss

PRESETS = MODEL_PRESETS  # name -> (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads)

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache`, in `generate()`'s model
# inputs and in the output classes, and warns on the old name. We accept both names as input and
# return the cache under the name the installed output class declares, so no version warns.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class DecoderLMConfig(PretrainedConfig):
    """Configuration of `DecoderLM`; field names follow Llama's so HF utilities find them.

    Args:
        vocab_size: Tokens in the vocabulary.
        hidden_size: Model width.
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention); None means as many as queries.
        intermediate_size: SwiGLU width; None gives 8/3 of hidden_size rounded up to a multiple of 32.
        max_position_embeddings: Longest sequence the rotary embedding is meant for.
        rope_theta: Rotary base.
        rms_norm_eps: RMSNorm epsilon.
        dropout: Dropout on attention probabilities and block outputs (training only).
        tie_word_embeddings: Share the embedding and LM head weights.
        num_experts: >1 replaces the MLP of the `moe_layers` by a top-k mixture of experts.
        num_experts_per_tok: Experts each token is routed to (k).
        moe_layers: Indices of the blocks that get experts; None means every block.
        capacity_factor: Cap each expert at `capacity_factor * tokens * k / E` tokens (overflow skips
            the MLP, the residual carries it); None means no cap.
        load_balance_coef, auxiliary_coef, z_loss_coef: Weights of the router terms added to the loss.
        initializer_range: Std of the normal init of linear and embedding weights.
    """

    model_type = "trainformers_decoder"
    keys_to_ignore_at_inference = ["cache", "past_key_values", "loss_terms"]

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        tie_word_embeddings: bool = True,
        num_experts: int = 1,
        num_experts_per_tok: int = 2,
        moe_layers: list[int] | None = None,
        capacity_factor: float | None = None,
        load_balance_coef: float = 0.01,
        auxiliary_coef: float = 0.0,
        z_loss_coef: float = 0.001,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_attention_heads={num_attention_heads}"
            )
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} must be divisible by num_key_value_heads={num_key_value_heads}"
            )
        if num_experts > 1 and not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"num_experts_per_tok={num_experts_per_tok} must be in [1, num_experts={num_experts}]")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size or 32 * math.ceil(8 * hidden_size / 3 / 32)
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.dropout = dropout
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layers = list(moe_layers) if moe_layers is not None else None
        self.capacity_factor = capacity_factor
        self.load_balance_coef = load_balance_coef
        self.auxiliary_coef = auxiliary_coef
        self.z_loss_coef = z_loss_coef
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DecoderLMConfig:
        """A named size (`nano`, `tiny`, `small`, `base`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown DecoderLM preset {name!r}; choose one of {sorted(PRESETS)}")
        hidden, layers, heads, kv_heads = PRESETS[name]
        fields = dict(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads
        )
        return cls(**{**fields, **overrides})

    def is_moe_layer(self, index: int) -> bool:
        return self.num_experts > 1 and (self.moe_layers is None or index in self.moe_layers)


# ---- building blocks --------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as Llama does, for parity and stability)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin of position * inverse frequency, for the half-rotation form of RoPE."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # computed per call (D/2 numbers), not kept as a buffer: from_pretrained builds models on
        # the meta device and leaves non-persistent buffers uninitialised
        self.head_dim, self.theta = head_dim, theta

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device)
        inv_freq = 1.0 / (self.theta ** (steps / self.head_dim))  # (D/2,)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (B, T, D)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x (B, heads, T, D) with cos/sin (B, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache."""

    def __init__(self, config: DecoderLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        width = config.hidden_size
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=False)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, K, S, D): past keys + these
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,  # no mask: plain causal (the fast path)
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,  # each key/value head serves H/K query heads
        )  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))  # (B, T, H*D) -> (B, T, C)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class RouterStats:
    """What one MoE layer's router did to a batch (the inputs of the router losses).

    Attributes:
        fraction: (E,) share of the token->expert assignments that went to each expert (f_i).
        probability: (E,) mean router probability of each expert (P_i); carries gradient.
        z: () mean of logsumexp(router logits)^2; carries gradient.
    """

    fraction: torch.Tensor
    probability: torch.Tensor
    z: torch.Tensor


class MixtureOfExperts(nn.Module):
    """Top-k token-choice routing over `num_experts` SwiGLU experts."""

    def __init__(self, config: DecoderLMConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.capacity_factor = config.capacity_factor
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            SwiGLU(config.hidden_size, config.intermediate_size) for _ in range(config.num_experts)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C)
        logits = self.router(tokens)  # (N, E)
        probs = logits.float().softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)  # the k weights sum to 1
        capacity = None
        if self.capacity_factor is not None:
            capacity = max(1, math.ceil(self.capacity_factor * tokens.shape[0] * self.top_k / self.num_experts))
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (chosen == e).nonzero(as_tuple=True)  # which tokens chose e, in which of their k slots
            if capacity is not None:
                token_idx, slot = token_idx[:capacity], slot[:capacity]  # first come, first served
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(tokens[token_idx]) * weights[token_idx, slot, None])
        assignments = F.one_hot(chosen, self.num_experts).sum(dim=(0, 1)).float()  # (E,) how often each was chosen
        stats = RouterStats(
            fraction=assignments / assignments.sum(),
            probability=probs.mean(dim=0),
            z=torch.logsumexp(logits.float(), dim=-1).pow(2).mean(),
        )
        return out.view(B, T, C), stats


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)); the MLP is a mixture of experts in MoE layers."""

    def __init__(self, config: DecoderLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        moe = config.is_moe_layer(layer_idx)
        self.mlp = MixtureOfExperts(config) if moe else SwiGLU(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, RouterStats | None]:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache))
        stats = None
        if isinstance(self.mlp, MixtureOfExperts):
            y, stats = self.mlp(self.mlp_norm(x))
        else:
            y = self.mlp(self.mlp_norm(x))
        return x + self.dropout(y), stats


def attention_mask_4d(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor, past: int, T: int, packed: bool
) -> torch.Tensor | None:
    """The boolean (B, 1, T, S) mask sdpa needs, or None when plain causal attention is enough.

    Combines causality, padding (`attention_mask`, (B, S), 1 = real token) and, for padding-free
    batches (`packed`: positions restart inside a row), attention only inside each document.
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and not packed and (past == 0 or T == 1):
        return None  # is_causal (or a single new token that may see every key) does it
    S = past + T
    device = position_ids.device
    query = torch.arange(past, S, device=device)[:, None]  # (T, 1) absolute positions of the new tokens
    key = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = (key <= query)[None, None]  # (1, 1, T, S) causal
    if padded:
        mask = mask & attention_mask[:, None, None, :].bool()  # (B, 1, T, S): never attend to pads
    if packed:
        document = (position_ids.diff(dim=-1, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1)  # (B, T) doc index
        mask = mask & (document[:, None, :, None] == document[:, None, None, :])  # (B, 1, T, T) same document
    # a query that may see no key at all (a left pad) would get NaN from softmax: let it see itself
    diagonal = torch.zeros(T, S, dtype=torch.bool, device=device)
    diagonal[torch.arange(T), torch.arange(past, S)] = True
    return mask | diagonal[None, None]


# ---- the model ---------------------------------------------------------------------------------


@dataclass
class DecoderLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `loss_terms`: the LM loss and each router term, detached,
    which the Trainer logs separately (MoE models only)."""

    loss_terms: dict[str, torch.Tensor] | None = None
    aux_loss: torch.Tensor | None = None  # the weighted router loss (MoE), with its gradient; in `loss` too


class DecoderLM(PreTrainedModel, GenerationMixin):
    """Decoder-only language model; see the module docstring."""

    config_class = DecoderLMConfig
    base_model_prefix = "decoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]
    _tied_weights_keys = (
        {"lm_head.weight": "embed_tokens.weight"}
        if int(transformers.__version__.split(".")[0]) >= 5
        else ["lm_head.weight"]  # transformers 4.x takes a list of the tied (target) names
    )

    def __init__(self, config: DecoderLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False  # gradient_checkpointing_enable() turns it on
        self.post_init()
        # the causal-LM loss (labels shifted inside): how trainers know to count labels[..., 1:]
        self.loss_type = "ForCausalLM"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        logits_to_keep: int = 0,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or the last `logits_to_keep`), and the loss when `labels` is given.

        `labels` are the input ids themselves (the shift happens here); -100 is ignored. With
        `num_items_in_batch` the LM loss is summed and divided by it (gradient accumulation).
        Padding-free batches: pass `position_ids` that restart per document and no
        `attention_mask`; attention then stays inside each document (without a cache).
        The KV cache comes as `cache` (transformers >= 5.24) or `past_key_values` (older).
        """
        if cache is not None and past_key_values is not None:
            raise ValueError("DecoderLM.forward: pass the KV cache as `cache` or `past_key_values`, not both")
        kv = cache if cache is not None else past_key_values
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and kv is None and not self.training:
            kv = DynamicCache()
        past = kv.get_seq_length() if kv is not None else 0
        given_positions = position_ids is not None
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)  # (B, T)
        packed = False
        if given_positions and kv is None and attention_mask is None:
            # padding-free batch: positions restart inside a row (one host sync, only on this path)
            packed = bool((position_ids[:, 1:] <= position_ids[:, :-1]).any())
        mask = attention_mask_4d(attention_mask, position_ids, past, T, packed)
        cos, sin = self.rotary(position_ids, x.dtype)  # (B, T, D) each
        router_stats: list[RouterStats] = []
        for block in self.layers:
            if self.gradient_checkpointing and self.training:
                # non-reentrant: the router statistics must keep their gradient through the recompute
                x, stats = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, kv, use_reentrant=False)
            else:
                x, stats = block(x, cos, sin, mask, kv)
            if stats is not None:
                router_stats.append(stats)
        x = self.norm(x)
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, T, V)

        loss, terms, aux = None, {}, None
        if labels is not None:
            loss = lm_loss(logits, labels, shift=True, num_items_in_batch=num_items_in_batch)
            terms["lm_loss"] = loss.detach()
        if router_stats:
            aux, router_terms = compute_router_auxiliary_loss(
                router_stats,
                load_balance_coef=self.config.load_balance_coef,
                auxiliary_coef=self.config.auxiliary_coef,
                z_loss_coef=self.config.z_loss_coef,
            )
            terms.update({k: v.detach() for k, v in router_terms.items()})
            if loss is not None:
                loss = loss + aux
        return DecoderLMOutput(
            loss=loss,
            logits=logits,
            loss_terms=terms if router_stats else None,
            aux_loss=aux,
            **{CACHE_FIELD: kv if use_cache else None},
        )


def from_llama_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `LlamaForCausalLM` state dict to `DecoderLM` names (same shapes, same math)."""
    renames = {
        "model.embed_tokens.": "embed_tokens.",
        "model.norm.": "norm.",
        ".self_attn.": ".attn.",
        ".input_layernorm.": ".attn_norm.",
        ".post_attention_layernorm.": ".mlp_norm.",
    }
    out = {}
    for name, tensor in state.items():
        if "rotary_emb" in name:
            continue
        new = name.replace("model.layers.", "layers.")
        for old, replacement in renames.items():
            new = new.replace(old, replacement)
        out[new] = tensor
    return out


def register() -> None:
    """Make `AutoConfig`/`AutoModelForCausalLM` resolve `model_type: trainformers_decoder`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(DecoderLMConfig.model_type, DecoderLMConfig)
        AutoModelForCausalLM.register(DecoderLMConfig, DecoderLM)
    except ValueError:  # already registered (module reloaded)
        pass
