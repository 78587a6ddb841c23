"""An independent NumPy OpenELM forward pass over HF-layout tensors (docs/OPENELM.md, section 1).

It shares no code with elm_jax: it reads the PyTorch-layout weights by their HF names, so it
checks our layout, our conversion and our forward pass together.
"""

import numpy as np


def _rmsnorm(x, w, eps=1e-6):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, positions, theta=10000.0):
    h = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, h, 2) / h)
    ang = positions[..., None] * inv_freq
    ang = np.concatenate([ang, ang], -1)[:, :, None, :]
    rot = np.concatenate([-x[..., h // 2:], x[..., : h // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def forward(t, cfg, tokens, segment_ids=None, positions=None):
    """Logits [B, S, V] in float64; ``t`` maps HF tensor names to arrays."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    b, s = tokens.shape
    h = cfg["head_dim"]
    if positions is None:
        positions = np.broadcast_to(np.arange(s), (b, s))
    mask = np.tril(np.ones((s, s), bool))[None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    x = t["transformer.token_embeddings.weight"][tokens]
    for i in range(cfg["num_transformer_layers"]):
        p = f"transformer.layers.{i}."
        nq, nk = cfg["num_query_heads"][i], cfg["num_kv_heads"][i]
        y = _rmsnorm(x, t[p + "attn_norm.weight"])
        qkv = (y @ t[p + "attn.qkv_proj.weight"].T).reshape(b, s, nq + 2 * nk, h)
        q, k, v = qkv[:, :, :nq], qkv[:, :, nq:nq + nk], qkv[:, :, nq + nk:]
        q = _rope(_rmsnorm(q, t[p + "attn.q_norm.weight"]), positions)
        k = _rope(_rmsnorm(k, t[p + "attn.k_norm.weight"]), positions)
        k = np.repeat(k, nq // nk, axis=2)  # repeat-interleave: head j*g+i reads kv head j
        v = np.repeat(v, nq // nk, axis=2)
        scores = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(h)
        scores = np.where(mask[:, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        a = np.einsum("bhst,bthd->bshd", probs, v).reshape(b, s, nq * h)
        x = x + a @ t[p + "attn.out_proj.weight"].T
        y = _rmsnorm(x, t[p + "ffn_norm.weight"])
        g = y @ t[p + "ffn.proj_1.weight"].T
        f = g.shape[-1] // 2
        gate, up = g[..., :f], g[..., f:]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[p + "ffn.proj_2.weight"].T
    x = _rmsnorm(x, t["transformer.norm.weight"])
    return x @ t["transformer.token_embeddings.weight"].T
