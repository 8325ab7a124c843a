"""
InternVL2 from scratch in plain PyTorch: InternViT, pixel shuffle, mlp1, the InternLM2/3, Qwen2/3 and Llama LLMs, the
released and transformers' (-hf) safetensors layouts, chat templates, dynamic tiling and greedy generation with a KV
cache. It imports nothing from this repository: copy it as it is (tokenizer.py reads the checkpoints' tokenizers).

    model, tok = load_model(path), tokenizer.load_tokenizer(path)
    print(model.chat(tok, load_image("page.png", image_size=model.config.force_image_size), "What is the total?"))

or from the shell: python evaluate.py --model /path/to/InternVL2-2B --image page.png --question "What is the total?"

Token compression plugs in at InternVLChat.compressor and LanguageModel.before_layer; compress.py holds FCoT-VL's,
baselines.py the training-free ones.
Supported: InternVL2 (not the Phi-3 4B), InternVL2.5 and 3 (Qwen2.5, InternLM2.5, InternLM3), dense InternVL3.5 (Qwen3).
"""
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SYSTEM_MESSAGE = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
LLM_ARCHS = {"InternLM2ForCausalLM": "internlm2", "Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama",
             "Qwen3ForCausalLM": "qwen3", "InternLM3ForCausalLM": "internlm3"}  # 2.5s name InternLM2's, Qwen2's


class ModelLoadError(Exception):
    """A checkpoint or tokenizer folder that cannot be used; the message says what to fix."""


# ---- config: the fields of the released config.json we use, with InternVL2's values as defaults ----

@dataclass
class VisionConfig:
    image_size: int = 448
    patch_size: int = 14
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-6
    norm_type: str = "layer_norm"  # "rms_norm" in InternViT-6B
    qkv_bias: bool = True
    qk_normalization: bool = False
    hidden_act: str = "gelu"


@dataclass
class LLMConfig:
    architecture: str = "InternLM2ForCausalLM"
    vocab_size: int = 92553
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    intermediate_size: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    rope_scaling: dict | None = None  # {"type": "dynamic" | "linear", "factor": f}
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has q/k/v biases ("bias" in InternLM2 configs, "qkv_bias" in InternLM3's)
    hidden_act: str = "silu"
    head_dim: int | None = None  # None: hidden_size / num_attention_heads (Qwen3 sets its own)
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k before the rotary


def head_dim(cfg):
    return cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads


@dataclass
class InternVLConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    force_image_size: int = 448
    downsample_ratio: float = 0.5
    select_layer: int = -1
    ps_version: str = "v2"
    template: str = "internlm2-chat"
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    compressor: dict = field(default_factory=dict)  # a compressed student's {"method", "ratio"}; {}: none
    source: dict = field(default_factory=dict, repr=False)  # the config.json read: a save keeps what we don't model


def _pick(cls, d):
    """cls from the config.json fields it has, each of its field's type (a number for a number): a hand-edited
    config fails here, in one line, not in the model's code."""
    out = {f.name: d[f.name] for f in fields(cls) if f.name in d}
    for f in fields(cls):
        kind, v = type(f.default), out.get(f.name)
        if kind in (int, float, bool, str) and f.name in out and not (
                isinstance(v, bool) if kind is bool else isinstance(v, str) if kind is str else
                isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise ModelLoadError(f"config.json: {f.name} is {v!r}, not a {'number' if kind in (int, float) else kind.__name__}; "
                                 "use the checkpoint's own config.json")
    return cls(**out)


def config_from_dict(d):
    """Parse a released InternVLChatModel config.json (vision_config + llm_config), or transformers'
    InternVLForConditionalGeneration one (vision_config + text_config: the -hf checkpoints)."""
    if "text_config" in d and "vision_config" in d:
        d = config_dict_from_hf(d)
    if not isinstance(d.get("vision_config"), dict) or not isinstance(d.get("llm_config"), dict):
        raise ModelLoadError("config.json has no vision_config/llm_config: not an InternVL2 (InternVLChatModel) "
                             "checkpoint")
    lc = d["llm_config"]
    archs = lc.get("architectures") or ["?"]
    arch = archs if isinstance(archs, str) else archs[0]  # a list in every released config
    if arch not in LLM_ARCHS:
        raise ModelLoadError(f"unknown language model architecture {arch!r} in config.json; supported: "
                             f"{', '.join(LLM_ARCHS)}")
    if d.get("ps_version", "v2") != "v2":
        raise ModelLoadError("ps_version v1 is not supported (InternVL2 uses v2)")
    qkv_bias = arch == "Qwen2ForCausalLM" or bool(lc.get("qkv_bias" if arch == "InternLM3ForCausalLM" else "bias"))
    llm = _pick(LLMConfig, dict(lc, architecture=arch, qkv_bias=qkv_bias, qk_norm=arch == "Qwen3ForCausalLM"))
    rope = lc.get("rope_parameters") or {}  # configs written by transformers 5
    llm.rope_theta = lc.get("rope_theta", rope.get("rope_theta", llm.rope_theta))
    if "rope_scaling" not in lc and rope.get("rope_type", "default") != "default":
        llm.rope_scaling = rope
    kind = (llm.rope_scaling or {}).get("type", (llm.rope_scaling or {}).get("rope_type", "default"))
    if kind not in ("default", "dynamic", "linear"):
        raise ModelLoadError(f"rope scaling {kind!r} in config.json is not supported (only dynamic and linear)")
    top = _pick(InternVLConfig, d)
    if top.template not in TEMPLATES:
        raise ModelLoadError(f"unknown chat template {top.template!r} in config.json; supported: "
                             f"{', '.join(TEMPLATES)}")
    top.vision, top.llm, top.source = _pick(VisionConfig, d["vision_config"]), llm, d
    if top.vision.norm_type not in ("layer_norm", "rms_norm"):
        raise ModelLoadError(f"unknown vision norm_type {top.vision.norm_type!r}")
    return top


def config_to_dict(cfg):
    """The inverse of config_from_dict, in the layout the original InternVL code reads."""
    src, arch = cfg.source, cfg.llm.architecture
    top = {k: v for k, v in asdict(cfg).items() if k not in ("vision", "llm", "source") and (k != "compressor" or v)}
    vision = dict(src.get("vision_config", {}), architectures=["InternVisionModel"], model_type="intern_vit_6b",
                  num_channels=3, **asdict(cfg.vision))
    llm = dict(src.get("llm_config", {}), **llm_fields(cfg.llm), architectures=[arch], model_type=LLM_ARCHS[arch])
    if arch in ("InternLM2ForCausalLM", "InternLM3ForCausalLM"):
        llm["bias" if arch == "InternLM2ForCausalLM" else "qkv_bias"] = cfg.llm.qkv_bias
    return dict(src, **top, architectures=["InternVLChatModel"], model_type="internvl_chat", dynamic_image_size=True,
                vision_config=vision, llm_config=llm)


def llm_fields(cfg):
    return {k: v for k, v in asdict(cfg).items() if k not in ("architecture", "qkv_bias", "qk_norm") and v is not None}


HF_TEXT = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}


def config_dict_from_hf(d):
    """transformers' InternVLConfig dict (-hf layout) -> the released layout's, with that layout's defaults."""
    v, t = d["vision_config"], d["text_config"]
    if t.get("model_type") not in HF_TEXT or d.get("vision_feature_select_strategy", "default") != "default":
        raise ModelLoadError(f"text_config model_type {t.get('model_type')!r} or vision_feature_select_strategy "
                             f"{d.get('vision_feature_select_strategy')!r} is not supported (qwen2, qwen3, llama; "
                             "default)")
    one = lambda x: x[0] if isinstance(x, list) else x  # transformers writes [height, width]
    vision = dict(v, image_size=one(v.get("image_size", 448)), patch_size=one(v.get("patch_size", 14)),
                  qkv_bias=v.get("attention_bias", False), qk_normalization=v.get("use_qk_norm", False))
    llm = dict(t, architectures=[HF_TEXT[t["model_type"]]], tie_word_embeddings=d.get("tie_word_embeddings", True))
    rest = {k: x for k, x in d.items() if k not in ("vision_config", "text_config", "architectures", "model_type")}
    return rest | dict(vision_config=vision, llm_config=llm, force_image_size=vision["image_size"],
                       select_layer=d.get("vision_feature_layer", -1), template=d.get("template", "internvl2_5"))


def config_to_hf(cfg, image_token_id):
    """config_to_dict's counterpart in transformers' InternVLConfig layout; InternLM2/3 become Llama."""
    v, lm, arch = cfg.vision, cfg.llm, cfg.llm.architecture
    text_type = {a: t for t, a in HF_TEXT.items()}.get(arch, "llama")
    if text_type == "llama" and lm.qkv_bias:
        raise ValueError(f"{arch} with q/k/v biases has no transformers (Llama) equivalent: save layout='original'")
    text = dict(llm_fields(lm), model_type=text_type, architectures=[HF_TEXT[text_type]])
    vision = dict(asdict(v), model_type="internvl_vision", image_size=[v.image_size] * 2, patch_size=[v.patch_size] * 2,
                  attention_bias=v.qkv_bias, use_qk_norm=v.qk_normalization, num_channels=3)
    top = {k: getattr(cfg, k) for k in ("downsample_ratio", "template", "min_dynamic_patch", "max_dynamic_patch",
                                        "use_thumbnail")}  # transformers keeps the last four as extras
    return dict(top, architectures=["InternVLForConditionalGeneration"], model_type="internvl", vision_config=vision,
                text_config=text, image_token_id=image_token_id, vision_feature_layer=cfg.select_layer,
                vision_feature_select_strategy="default", projector_hidden_act="gelu",
                tie_word_embeddings=lm.tie_word_embeddings)


def tiny_config(vocab_size=512, image_size=56):
    """A few-hundred-thousand-parameter model of the same architecture, for tests."""
    return InternVLConfig(
        vision=VisionConfig(image_size=image_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64),
        llm=LLMConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096),
        force_image_size=image_size, max_dynamic_patch=6)


# ---- InternViT ----

class RMSNorm(nn.Module):
    """Normalise in fp32, scale in the input dtype (InternLM2 / InternViT-6B)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, self.grid = cfg.hidden_size, cfg.image_size // cfg.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, C))
        self.patch_embedding = nn.Conv2d(3, C, cfg.patch_size, cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, C))

    def forward(self, pixel_values):
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, C, h, w]
        B, C, h, w = x.shape
        x = torch.cat([self.class_embedding.expand(B, 1, C).to(x.dtype), x.flatten(2).transpose(1, 2)], dim=1)
        pos = self.position_embedding[:, 1:]
        if (h, w) != (self.grid, self.grid):  # other image sizes: bicubic in fp32, as the original
            pos = pos.float().reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2).to(x.dtype)
        return x + torch.cat([self.position_embedding[:, :1].to(x.dtype), pos], dim=1)


class VisionAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, self.n_heads = cfg.hidden_size, cfg.num_attention_heads
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)  # rows [q; k; v]
        self.proj = nn.Linear(C, C)
        if cfg.qk_normalization:  # over the full width, before the head split (InternViT-6B)
            self.q_norm, self.k_norm = RMSNorm(C, cfg.layer_norm_eps), RMSNorm(C, cfg.layer_norm_eps)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(B, N, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)  # bidirectional
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class VisionBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, norm = cfg.hidden_size, RMSNorm if cfg.norm_type == "rms_norm" else nn.LayerNorm
        self.norm1, self.attn = norm(C, cfg.layer_norm_eps), VisionAttention(cfg)
        self.norm2 = norm(C, cfg.layer_norm_eps)
        self.mlp = nn.ModuleDict(dict(fc1=nn.Linear(C, cfg.intermediate_size), fc2=nn.Linear(cfg.intermediate_size, C)))
        self.ls1, self.ls2 = nn.Parameter(torch.ones(C)), nn.Parameter(torch.ones(C))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class InternViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = nn.ModuleDict(dict(layers=nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_hidden_layers))))

    def forward(self, pixel_values, select_layer=-1):
        """Hidden states after layer `select_layer` (-1: the last; there is no final norm)."""
        n = len(self.encoder.layers)
        x = self.embeddings(pixel_values)
        for block in self.encoder.layers[: n + 1 + select_layer if select_layer < 0 else select_layer]:
            x = block(x)
        return x


def pixel_shuffle(x, scale=0.5):
    """[N, h, w, C] -> [N, h*s, w*s, C/s^2]: each r x r block becomes one token, channels in row-major order
    (TL, TR, BL, BR for r=2). Equal to InternVL's ps_version v2."""
    N, h, w, C = x.shape
    r = round(1 / scale)
    if h % r or w % r:
        raise ValueError(f"pixel_shuffle needs a patch grid divisible by {r}, got {h}x{w}")
    x = x.view(N, h // r, r, w // r, r, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(N, h // r, w // r, r * r * C)


# ---- the language model, in InternLM2's layout ----
# q/k/v are packed in one wqkv whose rows are grouped per kv head as [q_{hG}, ..., q_{hG+G-1}, k_h, v_h];
# the Qwen2/2.5/3, Llama and InternLM3 checkpoints' separate q/k/v are packed at load.

def rope_cos_sin(cfg, position_ids, seq_len, dtype):
    """Rotary cos/sin for position_ids [B, L]; seq_len (cache included) is what dynamic NTK scaling checks."""
    d = head_dim(cfg)
    base, pos, scaling = cfg.rope_theta, position_ids.float(), cfg.rope_scaling or {}
    kind, factor = scaling.get("type", scaling.get("rope_type")), scaling.get("factor", 1.0)
    if ntk_rescales(cfg, seq_len):
        base = base * (factor * seq_len / cfg.max_position_embeddings - (factor - 1)) ** (d / (d - 2))
    elif kind == "linear":
        pos = pos / factor
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)
    freqs = pos[..., None] * inv_freq  # [B, L, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, L, d]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def ntk_rescales(cfg, seq_len):
    """Dynamic NTK scaling changes the rotary base once the sequence passes max_position_embeddings."""
    scaling = cfg.rope_scaling or {}
    return scaling.get("type", scaling.get("rope_type")) == "dynamic" and seq_len > cfg.max_position_embeddings


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """A preallocated per-layer cache [B, n_kv, max_len, d]. Eager: the filled prefix is attended and length grows.
    Static (index set by decode_step): k, v go in at index, the whole buffer is attended under the caller's mask."""

    def __init__(self, batch, n_kv, max_len, head_dim, dtype, device):
        self.k = torch.zeros(batch, n_kv, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length, self.index = 0, None
        self.next_position = None  # [B, 1]: the position id the next token takes (InternVLChat sets the first layer's)

    def update(self, k, v):
        if self.index is not None:
            self.k.index_copy_(2, self.index, k)
            self.v.index_copy_(2, self.index, v)
            return self.k, self.v
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def new_caches(cfg, batch, max_len, dtype, device):
    """One preallocated KVCache per decoder layer of LLMConfig cfg."""
    return [KVCache(batch, cfg.num_key_value_heads, max_len, head_dim(cfg), dtype, device)
            for _ in range(cfg.num_hidden_layers)]


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.group = head_dim(cfg), self.n_heads // self.n_kv
        self.wqkv = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        if cfg.qk_norm:  # Qwen3: over each head, before the rotary
            self.q_norm, self.k_norm = (RMSNorm(self.head_dim, cfg.rms_norm_eps) for _ in "qk")

    def project_qkv(self, x, cos, sin):
        """-> q [B, heads, L, d], k and v [B, kv heads, L, d], rotary applied to q and k."""
        B, L, _ = x.shape
        qkv = self.wqkv(x).view(B, L, self.n_kv, self.group + 2, self.head_dim)
        q, k, v = qkv[:, :, :, :self.group].flatten(2, 3), qkv[:, :, :, -2], qkv[:, :, :, -1]  # [B, L, heads, d]
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, mask, cache):
        B, L, _ = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        # query head i reads kv head i // group (wqkv's order). Decode: each kv head's queries as one [group, d] block,
        # so the cache is not repeated (266 tok/s on an H100 under compile + CUDA graph; a Triton flash-decoding 257)
        if L == 1:
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, self.group, -1), k, v, attn_mask=mask)
            return self.wo(y.reshape(B, 1, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, L, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H = cfg.hidden_size, cfg.intermediate_size
        self.attention = Attention(cfg)
        self.feed_forward = nn.ModuleDict(dict(w1=nn.Linear(D, H, bias=False),  # gate
                                               w3=nn.Linear(D, H, bias=False),  # up
                                               w2=nn.Linear(H, D, bias=False)))  # down
        self.attention_norm, self.ffn_norm = RMSNorm(D, cfg.rms_norm_eps), RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        ff, h = self.feed_forward, self.ffn_norm(x)
        return x + ff.w2(F.silu(ff.w1(h)) * ff.w3(h))


class LanguageModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(tok_embeddings=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                                        layers=nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)),
                                        norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)))
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.output.weight = self.model.tok_embeddings.weight
        self.before_layer = None  # the extension point for a method inside the LLM: see forward

    def forward(self, embeds, position_ids, mask=None, caches=None, last_only=False, image_mask=None, logits_mask=None):
        """Logits of embeds [B, L, D] at position_ids [B, L]; mask [B, 1, L, keys] (True: attend) or None: causal.
        The extension point inside the LLM: before_layer(self, i, x, cos, sin, mask, image_mask) -> (x, cos, sin,
        mask), if set, runs before decoder layer i in the prefill and every decode step (image_mask [B, L]: the
        visual inputs, or None). It may drop tokens with their cos/sin (so position ids) and mask rows; the later
        layers' caches are then shorter, and it gives the decode steps' masks."""
        seq_len = (caches[0].length if caches else 0) + embeds.shape[1]
        cos, sin = rope_cos_sin(self.config, position_ids, seq_len, embeds.dtype)
        x = embeds
        for i, layer in enumerate(self.model.layers):
            if self.before_layer is not None:
                x, cos, sin, mask = self.before_layer(self, i, x, cos, sin, mask, image_mask)
            x = layer(x, cos, sin, mask, caches[i] if caches else None)
        x = self.model.norm(x[:, -1:] if last_only else x if logits_mask is None else x[logits_mask])
        return self.output(x)


def static_decode_ok(lm, max_len):
    """decode_step's fixed buffers follow neither a before_layer hook nor dynamic NTK rope's changing base."""
    return lm.before_layer is None and not ntk_rescales(lm.config, max_len)


def decode_step(lm, caches, attention_mask, graph=None, compile=False):
    """step(token [B]) -> logits [B, V] of the next position, after a prefill of L tokens into caches (attention_mask
    [B, L]: the real ones). Decode reads every weight once per token, so an eager loop loses to launch overhead
    (gpt-fast's point): the step runs on static buffers, replayed as one CUDA graph on CUDA (graph=None) and
    torch.compiled if compile. Each step overwrites the logits it returned."""
    (B, L), device, max_len = attention_mask.shape, attention_mask.device, caches[0].k.shape[2]
    if not static_decode_ok(lm, max_len):
        raise ValueError(f"decode_step needs an LLM without a before_layer hook and, under dynamic rope, at most "
                         f"max_position_embeddings cached tokens (got {max_len}): decode eagerly")
    token = torch.zeros(B, 1, dtype=torch.long, device=device)
    position = caches[0].next_position  # the prefill's, else each left-padded row's count of real tokens
    position = attention_mask.long().sum(-1, keepdim=True) if position is None else position.clone()
    index = torch.tensor([L], device=device)
    keys = torch.zeros(B, 1, 1, max_len, dtype=torch.bool, device=device)
    keys[:, 0, 0, :L] = attention_mask.bool()
    for c in caches:
        c.index = index

    def run():
        return lm(lm.model.tok_embeddings(token), position, keys, caches)[:, -1]
    run = torch.compile(run, dynamic=False) if compile else run
    graph = device.type == "cuda" if graph is None else graph
    if graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the capture: its writes at index are redone by step 1
            for _ in range(2):
                run()
        torch.cuda.current_stream(device).wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            logits = run()

    def step(next_token):
        token.copy_(next_token.view(B, 1))
        keys.index_fill_(-1, index, True)
        if graph:
            cuda_graph.replay()
        out = logits if graph else run()
        position.add_(1)
        index.add_(1)
        return out
    return step


# ---- InternVL2: ViT -> pixel shuffle -> mlp1 -> image tokens spliced into the LLM's input embeddings ----

class InternVLChat(nn.Module):
    """InternVL2. compressor (None: InternVL2 itself) is the extension point for methods that hand the LLM fewer
    visual tokens (compress.build makes FCoT-VL's). It takes the pixel shuffle's grid and hands on the LLM's features:
      tokens_per_tile(n) -> how many of a tile's n tokens it hands on (num_image_token: the prompt's count), or
        None when the count follows the content; then
      counts(grid, tiles_per_image, projector) -> each image's count, which the prompt is built with;
      compress(grid, tiles_per_image, projector, counts) -> (features [sum(counts), D], positions [sum(counts)] or
        None): grid [tiles, h, w, C] holds the images' tiles in order, projector is mlp1, which the compressor
        applies to what it keeps (it may rank tokens by it, and carry a projector of its own), counts the
        <IMG_CONTEXT> tokens each image has in the prompt. positions: each token's index in its image's
        uncompressed sequence, its position id from the image's first one; the text after the image and the
        generated tokens follow the whole uncompressed image, as if no token had gone. None: consecutive ids.
    A prompt whose images have other counts than num_image_token per tile (a variable budget) needs
    tiles_per_image in forward and generate. A method inside the LLM uses language_model.before_layer instead."""

    def __init__(self, config, compressor=None):
        super().__init__()
        self.config = config
        self.vision_model = InternViT(config.vision)
        width, D = config.vision.hidden_size * round(1 / config.downsample_ratio) ** 2, config.llm.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, D), nn.GELU(), nn.Linear(D, D))
        self.language_model = LanguageModel(config.llm)
        self.compressor = compressor
        self.img_context_token_id = None  # set by load_model from the folder's tokenizer files

    @property
    def num_image_token(self):
        """Visual tokens per tile handed to the LLM (256 for InternVL2 at 448 px; fewer through a compressor)."""
        n = int(self.config.force_image_size // self.config.vision.patch_size * self.config.downsample_ratio) ** 2
        return n if self.compressor is None else self.compressor.tokens_per_tile(n)

    def visual_grid(self, pixel_values):
        """[tiles, 3, S, S] -> the pixel-shuffled ViT tokens [tiles, h, w, 4 x vision_hidden]."""
        x = self.vision_model(pixel_values, self.config.select_layer)[:, 1:]  # drop the class token
        g = math.isqrt(x.shape[1])
        return pixel_shuffle(x.reshape(x.shape[0], g, g, -1), self.config.downsample_ratio)

    def project(self, grid, tiles_per_image=None, counts=None):
        """Token grid -> (the LLM's features [tokens, llm_hidden]: mlp1's, or the compressor's, and its positions or
        None)."""
        if self.compressor is None:
            return self.mlp1(grid.flatten(0, 2)), None
        counts = counts or self.image_token_counts(grid, tiles_per_image)
        return self.compressor.compress(grid, tiles_per_image, self.mlp1, counts)

    def extract_feature(self, pixel_values):
        """[tiles, 3, S, S] of one image -> [tokens, llm_hidden]."""
        return self.project(self.visual_grid(pixel_values), [len(pixel_values)])[0]

    def image_token_counts(self, grid, tiles_per_image):
        """The <IMG_CONTEXT> count of each image's prompt: tiles x num_image_token, or the compressor's by content."""
        if self.num_image_token is None:
            return self.compressor.counts(grid, tiles_per_image, self.mlp1)
        return [n * self.num_image_token for n in tiles_per_image]

    @staticmethod
    def image_runs(is_img):
        """The length of each run of <IMG_CONTEXT> tokens, in order: one image each."""
        starts = is_img & ~F.pad(is_img, (1, 0))[:, :-1]
        image = starts.flatten().long().cumsum(0)[is_img.flatten()] - 1  # each image token's image
        return torch.bincount(image).tolist() if is_img.any() else []

    def tiles_from_runs(self, runs):
        """Each image's tile count, from its run of <IMG_CONTEXT> tokens when every tile has num_image_token."""
        per_tile = self.num_image_token
        if per_tile is None or any(n % per_tile for n in runs):
            what = "vary by content" if per_tile is None else f"are not whole tiles of {per_tile}"
            raise ValueError(f"image token runs {runs} {what}: pass tiles_per_image")
        return [n // per_tile for n in runs]

    def position_gaps(self, is_img, positions, runs, tiles, tile_tokens):
        """[B, L + 1]: the position ids the compressor left out before each token (the last column: before the next
        one), so that a kept token sits at its image's first id + its positions entry and the text after an image
        follows all tiles x tile_tokens of it."""
        B, L = is_img.shape
        tiles = torch.tensor(tiles, device=positions.device)
        last = torch.tensor(runs, device=positions.device).cumsum(0) - 1  # each image's last kept token, in positions
        prev = positions.roll(1)
        prev[torch.cat([last.new_zeros(1), last[:-1] + 1])] = -1  # an image's first kept token: none before it
        gap = torch.zeros(B, L + 1, dtype=torch.long, device=is_img.device)
        gap[:, :L][is_img] = positions - prev - 1  # left out just before each kept token
        ends = torch.zeros_like(is_img)
        ends[is_img] = torch.zeros_like(positions, dtype=torch.bool).index_fill_(0, last, True)
        gap[:, 1:][ends] += tiles * tile_tokens - 1 - positions[last]  # after each image's last kept token
        return gap.cumsum(-1)

    def forward(self, pixel_values, input_ids, attention_mask=None, position_ids=None, caches=None, last_only=False,
                grid=None, logits_mask=None, tiles_per_image=None):
        """Logits [B, L, V]. IMG_CONTEXT positions take the tiles' features in order, sample by sample.
        attention_mask [B, T] marks real tokens (left or right padding; with caches it covers the cache too).
        grid: visual_grid's output in place of pixel_values (distillation runs the ViT once for two projectors).
        logits_mask [B, L]: logits only where it is true, as [n, V] (training needs only the answers').
        tiles_per_image: each image's tile count, needed only where the prompt's counts vary (class docstring)."""
        embeds = self.language_model.model.tok_embeddings(input_ids)
        (B, L), device = input_ids.shape, input_ids.device
        is_img, gaps = None, None
        if pixel_values is not None or grid is not None:
            if self.img_context_token_id is None:
                raise ValueError("model.img_context_token_id is not set: load the model from a folder with tokenizer "
                                 "files")
            is_img = input_ids == self.img_context_token_id
            grid = self.visual_grid(pixel_values) if grid is None else grid
            runs = self.image_runs(is_img) if self.compressor is not None else None
            tiles = tiles_per_image or (self.tiles_from_runs(runs) if runs is not None else None)
            feats, positions = self.project(grid, tiles, runs)
            if is_img.sum() != len(feats):
                raise ValueError(f"{int(is_img.sum())} <IMG_CONTEXT> tokens but {len(grid)} tiles give {len(feats)} "
                                 f"features: build the prompt with model.image_token_counts")
            embeds = embeds.masked_scatter(is_img[..., None], feats.to(embeds.dtype))
            if positions is not None and position_ids is None:
                gaps = self.position_gaps(is_img, positions, runs, tiles, grid.shape[1] * grid.shape[2])
        past = caches[0].length if caches else 0
        if position_ids is None:
            if past and caches[0].next_position is not None:  # generation continues from the last position id
                position_ids = caches[0].next_position + torch.arange(L, device=device)
            elif attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]
            else:
                position_ids = torch.arange(past, past + L, device=device).expand(B, L)
            position_ids = position_ids if gaps is None else position_ids + gaps[:, :L]
        if caches:  # the next token follows the last one and the position ids the compressor left out after it
            caches[0].next_position = position_ids[:, -1:] + 1 + (0 if gaps is None else gaps[:, L:] - gaps[:, -2:-1])
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            keys = torch.arange(attention_mask.shape[1], device=device)
            queries = keys[-L:, None] if caches is None else past + torch.arange(L, device=device)[:, None]
            mask = (keys <= queries) & attention_mask.bool()[:, None, :]
            mask = (mask | (keys == queries))[:, None]  # a padded query sees itself: no all-masked row, no NaN
        return self.language_model(embeds, position_ids, mask, caches, last_only, is_img, logits_mask)

    @torch.inference_mode()
    def generate(self, pixel_values, input_ids, attention_mask=None, max_new_tokens=64, stop_ids=(), min_new_tokens=0,
                 stats=None, grid=None, tiles_per_image=None):
        """Greedy decoding with a KV cache for a left-padded batch -> each row's new ids, cut before a stop id.
        grid, tiles_per_image: as forward's."""
        (B, L), device = input_ids.shape, input_ids.device
        caches = new_caches(self.config.llm, B, L + max_new_tokens, self.language_model.output.weight.dtype, device)
        mask = torch.ones(B, L, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
        stop = torch.tensor(list(stop_ids) or [-1], device=device)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=device)
        t0 = _now(device)
        logits = self(pixel_values, input_ids, mask, caches=caches, last_only=True, grid=grid,
                      tiles_per_image=tiles_per_image)
        t1 = _now(device)
        # on CUDA, the decode loop replays one captured step (see decode_step); an LLM with a hook stays eager
        static = input_ids.is_cuda and max_new_tokens > 1 and static_decode_ok(self.language_model, L + max_new_tokens)
        next_logits = decode_step(self.language_model, caches, mask) if static else None
        for step in range(max_new_tokens):
            if step < min_new_tokens:
                logits[:, -1, stop[stop >= 0]] = float("-inf")
            token = logits[:, -1].argmax(-1)
            done |= torch.isin(token, stop)
            out.append(token)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if next_logits is not None:
                logits = next_logits(token)[:, None]
                continue
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            logits = self(None, token[:, None], mask, caches=caches)
        t2 = _now(device)
        ids = torch.stack(out, dim=1).tolist()
        ids = [row[:next((i for i, t in enumerate(row) if t in stop_ids), len(row))] for row in ids]
        if stats is not None:
            for key, value in (("prefill_s", t1 - t0), ("decode_s", t2 - t1), ("decode_tokens", B * (len(out) - 1))):
                stats[key] = stats.get(key, 0) + value
        return ids

    def batch_chat(self, tok, pixel_values_list, questions, max_new_tokens=64, min_new_tokens=0, history=None,
                   stats=None):
        """One answer per (image tiles, question) pair, greedy, as InternVL's chat(). stats gains the sums of
        generate's timings and of the visual tokens, and image_tokens: each pair's count (0: no image)."""
        device = self.language_model.output.weight.device
        images = [pv for pv in pixel_values_list if pv is not None]
        pixel_values = torch.cat(images).to(device, self.mlp1[1].weight.dtype) if images else None
        tiles, grid, counts = [len(pv) for pv in images], None, None
        if images and self.num_image_token is None:  # a budget by content: the ViT first, then the prompt
            t0 = _now(device)
            grid = self.visual_grid(pixel_values)
            counts = self.image_token_counts(grid, tiles)
            if stats is not None:  # the ViT's time is the prefill's, as where generate runs it
                stats["prefill_s"] = stats.get("prefill_s", 0) + _now(device) - t0
            pixel_values = None
        counts = iter(counts or self.image_token_counts(grid, tiles))
        per_pair = [0 if pv is None else next(counts) for pv in pixel_values_list]
        prompts = [chat_prompt(q, n or None, self.config.template, history=history)
                   for n, q in zip(per_pair, questions)]
        rows = [tok.encode(p) for p in prompts]
        L = max(map(len, rows))
        input_ids = torch.tensor([[0] * (L - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows], device=device)
        stop_ids = [tok.token_to_id(STOP_TOKEN)]
        ids = self.generate(pixel_values, input_ids, attention_mask, max_new_tokens, stop_ids, min_new_tokens, stats,
                            grid, tiles)
        if stats is not None:
            stats["visual_tokens"] = stats.get("visual_tokens", 0) + sum(per_pair)
            stats["image_tokens"] = per_pair
        return [tok.decode(r).strip() for r in ids]

    def chat(self, tok, pixel_values, question, max_new_tokens=64, history=None):
        return self.batch_chat(tok, [pixel_values], [question], max_new_tokens, history=history)[0]


def _now(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- chat templates: InternVL's conversation.py, chosen by config.json's template ----

STOP_TOKEN = "<|im_end|>"  # the template's separator: InternVL's chat() stops on it alone
TEMPLATES = {  # name -> (default system message, what ends each turn); Hermes-2 and internlm2-chat are the same text
    "Hermes-2": (SYSTEM_MESSAGE, "<|im_end|>"), "internlm2-chat": (SYSTEM_MESSAGE, "<|im_end|>"),
    "internvl2_5": ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
                    "<|im_end|>\n")}  # InternVL2.5, 3 and 3.5


def chat_prompt(question, num_image_tokens=None, template="internlm2-chat", system_message=None, history=None):
    """The query string InternVL's chat() builds. num_image_tokens: IMG_CONTEXT count for the image (tiles x
    tokens per tile), a list of them for several images (each fills the next <image> in the question), or None
    for a text-only question. Unlike the original, an empty question or answer keeps its separator."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; supported: {', '.join(TEMPLATES)}")
    default_system, sep = TEMPLATES[template]
    if num_image_tokens is not None and not history and "<image>" not in question:
        question = "<image>\n" + question  # as InternVL's chat(): with history, the image is in an earlier turn
    prompt = f"<|im_start|>system\n{default_system if system_message is None else system_message}{sep}"
    for q, a in [*(history or []), (question, None)]:
        prompt += f"<|im_start|>user\n{q}{sep}<|im_start|>assistant\n"
        if a is not None:
            prompt += f"{a}{sep}"
    for n in [num_image_tokens] if isinstance(num_image_tokens, int) else num_image_tokens or []:
        prompt = prompt.replace("<image>", IMG_START + IMG_CONTEXT * n + IMG_END, 1)
    return prompt


# ---- image preprocessing: dynamic tiling with a thumbnail, ImageNet normalisation ----

def find_grid(width, height, min_num=1, max_num=12, image_size=448):
    """The (cols, rows) tile grid whose aspect ratio is closest to the image's. On an exact tie the grid with more
    tiles wins if the image has more than half of its pixels."""
    grids = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if min_num <= i * j <= max_num}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for i, j in grids:
        diff = abs(width / height - i / j)
        if diff < best_diff or (diff == best_diff and width * height > 0.5 * image_size * image_size * i * j):
            best, best_diff = (i, j), diff
    return best


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=True):
    """Tiles of the resized image in row-major order, then the whole image as a thumbnail."""
    cols, rows = find_grid(*image.size, min_num, max_num, image_size)
    resized = image.resize((cols * image_size, rows * image_size))
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def to_tensor(image, image_size=448):
    """PIL image -> normalised [3, S, S] float32 (Resize, ToTensor, Normalize)."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def to_rgb(image):
    """8-bit RGB. 16-bit grayscale (PNG's I;16) is scaled to 8 bits: PIL's convert clips it to white. 32-bit
    integer images (mode I) hold 8-bit values as often as 16-bit ones: scaled only if a value is above 255."""
    if image.mode.startswith("I;16") or image.mode == "I":
        a = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or a.max() > 255:
            a = a / 257  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def load_image(image, max_num=12, image_size=448, min_num=1, use_thumbnail=True):
    """A path or PIL image -> pixel_values [tiles, 3, S, S] (the thumbnail last when tiles > 1)."""
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as f:
                image = to_rgb(f)
        except Image.DecompressionBombError as e:
            raise ValueError(f"cannot read image {image}: {e} Downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if "
                             "you trust the file") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {image}: {e}") from None
    tiles = dynamic_preprocess(to_rgb(image), min_num, max_num, image_size, use_thumbnail)
    return torch.stack([to_tensor(t, image_size) for t in tiles])


# ---- checkpoints: config.json + model.safetensors (or shards with an index), released or -hf layout ----
# Our parameter names are the released InternLM2 names; other LLMs and transformers' layout are renamed on the way.

LLAMA_NAMES = [("model.tok_embeddings.", "model.embed_tokens."), (".attention.wo.", ".self_attn.o_proj."),
               (".attention.q_norm.", ".self_attn.q_norm."), (".attention.k_norm.", ".self_attn.k_norm."),
               (".feed_forward.w1.", ".mlp.gate_proj."), (".feed_forward.w3.", ".mlp.up_proj."),
               (".feed_forward.w2.", ".mlp.down_proj."), (".attention_norm.", ".input_layernorm."),
               (".ffn_norm.", ".post_attention_layernorm."), ("language_model.output.", "language_model.lm_head.")]
HF_VISION_NAMES = [("vision_model.", "model.vision_tower."), ("class_embedding", "cls_token"), (".layers.", ".layer."),
                   ("position_embedding", "position_embeddings"), ("patch_embedding", "patch_embeddings.projection"),
                   ("ls1", "lambda_1"), ("ls2", "lambda_2"), ("attn.proj.", "attention.projection_layer."),
                   ("attn.", "attention."), ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after.")]
HF_NAMES = [("mlp1.0.", "model.multi_modal_projector.layer_norm."), ("language_model.lm_head.", "lm_head."),
            ("mlp1.1.", "model.multi_modal_projector.linear_1."), ("language_model.model.", "model.language_model."),
            ("mlp1.3.", "model.multi_modal_projector.linear_2.")]


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ModelLoadError(f"{path} is not valid JSON ({e}): restore it from the original checkpoint") from None
    if not isinstance(data, dict):  # every file read here is an object
        raise ModelLoadError(f"{path} holds a JSON {type(data).__name__}, not an object: restore it from the original "
                             "checkpoint")
    return data


def checkpoint_keys(name, config, layout="original"):
    """Our parameter `name` -> [(checkpoint key, slot)] in `layout`: "original" (InternVL's released one) or "hf"
    (transformers' InternVLForConditionalGeneration). slot: None, or which part (q, k or v) of our packed qkv the key
    holds: checkpoints keep the LLM's apart (but InternLM2's released ones) and -hf ones the ViT's."""
    split = None
    if name.startswith("language_model.") and (layout == "hf" or config.llm.architecture != "InternLM2ForCausalLM"):
        for ours, theirs in LLAMA_NAMES:
            name = name.replace(ours, theirs)
        split = ".attention.wqkv.", ".self_attn.{}_proj."
    if layout == "hf":
        for ours, theirs in HF_VISION_NAMES if name.startswith("vision_model.") else HF_NAMES:
            name = name.replace(ours, theirs)
        split = split or (".attention.qkv.", ".attention.{}_proj.")
    if split is None or split[0] not in name:
        return [(name, None)]
    return [(name.replace(split[0], split[1].format(s)), s) for s in "qkv"]


def qkv_part(tensor, name, slot, config):
    """View of the q, k or v rows inside our packed qkv weight/bias `name`: the ViT's rows are [q; k; v], the LLM's
    wqkv's grouped per kv head."""
    if name.startswith("vision_model."):
        return tensor.view(3, -1, *tensor.shape[1:])["qkv".index(slot)]
    n_kv, g = config.llm.num_key_value_heads, config.llm.num_attention_heads // config.llm.num_key_value_heads
    grouped = tensor.view(n_kv, g + 2, head_dim(config.llm), *tensor.shape[1:])
    return {"q": grouped[:, :g], "k": grouped[:, g:g + 1], "v": grouped[:, g + 1:]}[slot]


def load_model(path, device="cpu", dtype=torch.float32, build_compressor=None):
    """Build InternVL from a checkpoint folder in the released layout or -hf's (config.json with a text_config),
    streaming tensors shard by shard into the modules. A compressed student's folder needs build_compressor(config)
    -> module: compress.build."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isdir(path):
        raise ModelLoadError(f"{path} is a file: pass the checkpoint folder that holds config.json and "
                             "model*.safetensors" if os.path.isfile(path) else
                             f"checkpoint folder {path} does not exist")
    cfg_dict = read_json(os.path.join(path, "config.json"))
    if cfg_dict is None:
        raise ModelLoadError(f"no config.json in {path}: a checkpoint folder holds config.json and model*.safetensors")
    config, layout = config_from_dict(cfg_dict), "hf" if "text_config" in cfg_dict else "original"
    index = read_json(os.path.join(path, "model.safetensors.index.json"))
    if index is not None:
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise ModelLoadError(f"model.safetensors.index.json in {path} has no weight_map: restore it from the "
                                 "original checkpoint")
        files = sorted(set(index["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    elif any(f.endswith(".bin") for f in os.listdir(path)):
        raise ModelLoadError(f"{path} holds only pickle weights (*.bin), which are not loaded (unpickling can run "
                             "code): convert them once, in your own environment, with safetensors.torch.save_file("
                             "torch.load(f, weights_only=True), 'model.safetensors') (shards: each one, and an index "
                             "naming the new files)")
    else:
        raise ModelLoadError(f"no model.safetensors or model.safetensors.index.json in {path}: copy the checkpoint's "
                             "weights there")
    if config.compressor and build_compressor is None:
        raise ModelLoadError(f"{path} is a compressed student ({config.compressor}): load it with "
                             "load_model(path, build_compressor=compress.build) (baselines.build for a model "
                             "baselines.apply changed)")
    with torch.device("meta"):
        model = InternVLChat(config, build_compressor(config) if config.compressor else None)
    expected = {k: t.shape for k, t in export_state_dict(model, layout)}  # on meta: costs no memory
    model = model.to(dtype).to_empty(device=device)  # allocate once, in the target dtype
    if config.llm.tie_word_embeddings:  # to_empty gave the tied output its own (uninitialised) storage: tie it again
        model.language_model.output.weight = model.language_model.model.tok_embeddings.weight
    params = dict(model.named_parameters())
    where = {key: (name, slot) for name in params for key, slot in checkpoint_keys(name, config, layout)}
    seen, bad_shape = set(), []
    for fname in files:
        fpath = os.path.join(path, fname)
        if not os.path.exists(fpath):
            raise ModelLoadError(f"shard {fname} listed in the index is missing from {path}: download or copy it there")
        try:
            with safe_open(fpath, framework="pt", device="cpu") as f:
                for key in f.keys():
                    seen.add(key)
                    if key not in expected:
                        continue
                    t = f.get_tensor(key)
                    if t.shape != expected[key]:
                        bad_shape.append(f"{key} {tuple(t.shape)} (expected {tuple(expected[key])})")
                        continue
                    name, slot = where[key]
                    target = params[name].data if slot is None else qkv_part(params[name].data, name, slot, config)
                    target.copy_(t.view(target.shape))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"cannot read {fpath}: {e} (corrupt or truncated file: download it again)") from None
    problems = [f"{len(keys)} {what}: " + ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "") for what, keys in
                (("missing", sorted(set(expected) - seen)), ("unexpected", sorted(seen - set(expected))),
                 ("mis-shaped", bad_shape)) if keys]
    if problems:
        raise ModelLoadError(f"checkpoint {path} does not match its config.json: " + "; ".join(problems))
    added = added_tokens(path)
    model.img_context_token_id = added.get(IMG_CONTEXT, cfg_dict.get("image_token_id"))
    if (top := max(added.values(), default=-1)) >= config.llm.vocab_size:
        raise ModelLoadError(f"the tokenizer in {path} has token id {top}, past the {config.llm.vocab_size} rows of the "
                             "embedding: the tokenizer files are another model's")
    return model.eval()


def added_tokens(path, special_only=False):
    """content -> id of the tokens added on top of the vocabulary (tokenizer.json, tokenizer_config.json,
    added_tokens.json). special_only: those marked special (added_tokens.json's count as special)."""
    tj, tc = (read_json(os.path.join(path, f), {}) for f in ("tokenizer.json", "tokenizer_config.json"))
    try:
        decoder = tc.get("added_tokens_decoder", {}).items()
        listed = tj.get("added_tokens", []) + [dict(t, id=int(i)) for i, t in decoder]
        tokens = {t["content"]: t["id"] for t in listed if t.get("special", True) or not special_only}
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a list for a map, an entry without its content
        raise ModelLoadError(f"the added tokens of {path} (tokenizer.json, tokenizer_config.json) are not as the "
                             f"tokenizers library writes them ({type(e).__name__}: {e}): restore those files") from None
    tokens |= read_json(os.path.join(path, "added_tokens.json"), {})
    if bad := next((k for k, i in tokens.items() if not isinstance(k, str) or type(i) is not int), None):
        raise ModelLoadError(f"added token {bad!r} of {path} has id {tokens[bad]!r}, not an integer: restore the "
                             "tokenizer files")
    return tokens


def export_state_dict(model, layout="original"):
    """Our parameters under the checkpoint's key names in `layout` (see checkpoint_keys)."""
    for name, t in model.state_dict().items():
        if model.config.llm.tie_word_embeddings and name == "language_model.output.weight":
            continue
        for key, slot in checkpoint_keys(name, model.config, layout):
            yield key, t if slot is None else qkv_part(t, name, slot, model.config).reshape(-1, *t.shape[1:])


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "added_tokens.json", "special_tokens_map.json")  # sentencepiece's and BPE's, and the added tokens


def save_model(model, path, max_shard_bytes=5 * 2**30, tokenizer_dir=None, layout="original"):
    """Write config.json and safetensors (sharded with an index past max_shard_bytes) in the released layout, or with
    layout="hf" in transformers' (InternVLForConditionalGeneration). Each file is written beside and renamed into
    place: a crash leaves no half-written file."""
    from safetensors.torch import save_file
    if layout not in ("original", "hf") or (layout == "hf" and model.compressor is not None):
        raise ValueError(f"layout {layout!r}: save 'original' or, for a model without a compressor, 'hf'")
    cfg = config_to_hf(model.config, model.img_context_token_id) if layout == "hf" else config_to_dict(model.config)
    os.makedirs(path, exist_ok=True)
    shards, size = [{}], 0
    for name, t in export_state_dict(model, layout):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().to("cpu").contiguous()
        size += nbytes
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, fname in zip(shards, names):
        save_file(shard, os.path.join(path, fname + ".tmp"), metadata={"format": "pt"})
        os.replace(os.path.join(path, fname + ".tmp"), os.path.join(path, fname))
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    files = {"config.json": cfg}
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
        files["model.safetensors.index.json"] = {"metadata": {"total_size": total},
                                                 "weight_map": {k: f for s, f in zip(shards, names) for k in s}}
    elif os.path.exists(os.path.join(path, "model.safetensors.index.json")):
        os.remove(os.path.join(path, "model.safetensors.index.json"))
    for fname, obj in files.items():
        with open(os.path.join(path, fname + ".tmp"), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
        os.replace(os.path.join(path, fname + ".tmp"), os.path.join(path, fname))
    if tokenizer_dir is not None:
        for fname in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, fname)
            if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(os.path.join(path, fname)):
                shutil.copyfile(src, os.path.join(path, fname))
