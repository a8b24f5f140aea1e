#!/usr/bin/env python3
"""The PyTorch peer of `sigprop train`: the same model, data shape and optimizer, done the
obvious way, to put the trainer's tokens/s beside (issue 8 part 4).

The model is `sigprop train`'s default at --width: an embedding stem (vocabulary 16) plus a
learned positional embedding, `layers` pre-LN blocks of causal multi-head attention and a
GELU MLP (×4), no biases and no LayerNorm gains (the paper's blocks), a final LN and a dense
head over the 16 symbols. The data is the copy task (T = 16: 8 random symbols, 8 blanks,
the second half scored), 32 sequences a step. AdamW with gradient clipping at 1, as the
trainer does. Prints tokens/s for float32 and float64 on the same threads.

    python3 bench/torch_train_peer.py --width 256 --threads 2
    sigprop bench --train --threads 2        # runs this script beside sigprop f32 and f64
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F


def run(a, dtype):
    torch.manual_seed(0)
    n, H, T, M, V, B = a.width, a.heads, a.tokens, 4, a.vocab, a.batch
    C = n // H

    def w(rows, cols, c, fan_in):
        return torch.nn.Parameter(torch.randn(rows, cols, dtype=dtype) * math.sqrt(c / fan_in))

    emb = w(V, n, 1.0, 1)
    pe = w(T, n, 1.0, 1)
    blocks = []
    for _ in range(a.layers):
        blocks.append([w(n, n, 0.5, n), w(n, n, 0.5, n), w(n, n, 0.5, n), w(n, n, 1 / 3, n),
                       w(M * n, n, 0.4, n), w(n, M * n, 1.6, M * n)])
    head = w(V, n, 1.0, n)
    params = [emb, pe, head] + [p for b in blocks for p in b]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def batch(step):
        g = torch.Generator().manual_seed(step)
        syms = torch.randint(1, V, (B, T // 2), generator=g)
        ids = torch.cat([syms, torch.zeros_like(syms)], dim=1)
        return ids, syms

    def loss_fn(ids, syms):
        z = emb[ids] + pe  # B × T × n
        for q, k, v, u, wm, xm in blocks:
            s = F.layer_norm(z, (n,), eps=1e-6)
            qh = (s @ q.T).view(B, T, H, C).transpose(1, 2)
            kh = (s @ k.T).view(B, T, H, C).transpose(1, 2)
            vh = (s @ v.T).view(B, T, H, C).transpose(1, 2)
            logits = qh @ kh.transpose(-1, -2) / math.sqrt(C)
            att = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
            z = z + (att @ vh).transpose(1, 2).reshape(B, T, n) @ u.T
            s = F.layer_norm(z, (n,), eps=1e-6)
            z = z + F.gelu(s @ wm.T) @ xm.T
        out = F.layer_norm(z, (n,), eps=1e-6) @ head.T
        return F.cross_entropy(out[:, T // 2:].reshape(-1, V), syms.reshape(-1))

    def step(k):
        ids, syms = batch(k)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ids, syms)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    for k in range(3):  # warm-up: allocator and thread pool
        step(k)
    t = time.perf_counter()
    for k in range(a.steps):
        loss = step(3 + k)
    secs = time.perf_counter() - t
    return B * T * a.steps / secs, loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
        tps, loss = run(a, dt)
        print(f"torch {name}: {tps:.0f} tokens/s (width {a.width}, {a.layers} layers, "
              f"batch {a.batch} x {a.tokens} tokens, {a.steps} AdamW steps, {a.threads} threads; "
              f"last loss {loss:.4f})")


if __name__ == "__main__":
    main()
