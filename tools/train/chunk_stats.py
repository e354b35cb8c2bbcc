#!/usr/bin/env python3
"""The trained model's real Gated DeltaNet chunk statistics, to set beside the synthetic regimes the
kernel tests use (tests/support/gdn_inputs.h: strong decay ~ -5/token, weak ~ -0.1/token, key cosine 0,
0.2, 0.5). For every linear-attention layer and value head, over 64-token chunks of held-out text:
  - key cosine: mean cosine between the (L2-normalised) keys of different tokens in a chunk;
  - decay per token: g = -exp(A_log) * softplus(a + dt_bias) (log decay, natural log);
  - beta: the write strength sigmoid(b);
  - ||A||: the Frobenius and infinity norms of A_ij = beta_i (k_i . k_j) exp(G_i - G_j), i > j, the
    strictly lower-triangular matrix whose (I + A)^-1 the Neumann series approximates (its convergence
    depends on A's powers).
Usage: chunk_stats.py MODEL_DIR HELDOUT_TOKENS.u16 [--windows 8]   (prints a markdown table and JSON)
"""
import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

CHUNK = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args()
    ids = np.fromfile(args.tokens, dtype="<u2").astype(np.int64)[: args.windows * 513].reshape(args.windows, 513)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(ids[:, :512]), output_hidden_states=True)
    rows = []
    layers = model.model.layers
    for i, layer in enumerate(layers):
        if not hasattr(layer, "linear_attn"):
            continue
        la = layer.linear_attn
        with torch.no_grad():
            x = layer.input_layernorm(out.hidden_states[i])  # [B, T, H]
            qkv = F.silu(la.conv1d(la.in_proj_qkv(x).transpose(1, 2))[..., : x.shape[1]]).transpose(1, 2)
            hk, dk, hv = la.num_k_heads, la.head_k_dim, la.num_v_heads
            k = qkv[..., hk * dk: 2 * hk * dk].reshape(*x.shape[:2], hk, dk)
            k = F.normalize(k, dim=-1).repeat_interleave(hv // hk, dim=2)  # [B, T, Hv, dk]
            beta = torch.sigmoid(la.in_proj_b(x))  # [B, T, Hv]
            g = -la.A_log.float().exp() * F.softplus(la.in_proj_a(x).float() + la.dt_bias)
        b, t = x.shape[:2]
        cos, fro, inf = [], [], []
        for c0 in range(0, t, CHUNK):
            kc = k[:, c0:c0 + CHUNK].permute(0, 2, 1, 3)  # [B, Hv, C, dk]
            gc = g[:, c0:c0 + CHUNK].permute(0, 2, 1).cumsum(-1)  # [B, Hv, C]
            bc = beta[:, c0:c0 + CHUNK].permute(0, 2, 1)
            kk = kc @ kc.transpose(-1, -2)  # cosines (unit keys)
            n = kk.shape[-1]
            off = ~torch.eye(n, dtype=torch.bool)
            cos.append(kk[..., off].mean().item())
            decay = (gc.unsqueeze(-1) - gc.unsqueeze(-2)).clamp(max=0).exp()
            a = torch.tril(bc.unsqueeze(-1) * kk * decay, diagonal=-1)
            fro.append(a.flatten(-2).norm(dim=-1).mean().item())
            inf.append(a.abs().sum(-1).amax(-1).mean().item())
        rows.append({"layer": i, "key_cosine": float(np.mean(cos)), "decay_per_token_mean": g.mean().item(),
                     "decay_per_token_p10": g.flatten().quantile(0.1).item(),
                     "decay_per_token_p90": g.flatten().quantile(0.9).item(), "beta_mean": beta.mean().item(),
                     "A_fro_mean": float(np.mean(fro)), "A_inf_mean": float(np.mean(inf))})
    print("| layer | key cosine | decay/token mean | p10 | p90 | beta mean | mean ||A||_F | mean ||A||_inf |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layer']} | {r['key_cosine']:.3f} | {r['decay_per_token_mean']:.3f} | {r['decay_per_token_p10']:.3f} | "
              f"{r['decay_per_token_p90']:.4f} | {r['beta_mean']:.3f} | {r['A_fro_mean']:.2f} | {r['A_inf_mean']:.2f} |")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
