#!/usr/bin/env python3
"""The PyTorch peer of `sigprop bench`: the same ensemble, done the obvious way.

For every sample: fresh Gaussian weights with the paper-vit variances, a pre-LN Transformer
forward pass over one sequence of T tokens, one backward pass of a Gaussian cotangent on every
output, and the squared gradient norms per parameter (the trace-mode NTK). Prints samples/s.
"""
import argparse
import math
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--n-in", type=int, default=768)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    n, H, T, M = a.width, a.heads, a.tokens, 4
    C = n // H
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, a.n_in, generator=g, dtype=dt)

    def w(rows, cols, c, fan_in):
        return (torch.randn(rows, cols, generator=g, dtype=dt) * math.sqrt(c / fan_in)).requires_grad_()

    def sample():
        ps = [w(n, a.n_in, 1.0, a.n_in), (torch.randn(T, n, generator=g, dtype=dt) * 0.02).requires_grad_()]
        z = x @ ps[0].T + ps[1]
        for _ in range(a.layers):
            q, k, v, u = (w(n, n, c, n) for c in (0.5, 0.5, 0.5, 1 / 3))
            s = torch.nn.functional.layer_norm(z, (n,), eps=1e-6)
            qh = (s @ q.T).view(T, H, C).transpose(0, 1)
            kh = (s @ k.T).view(T, H, C).transpose(0, 1)
            vh = (s @ v.T).view(T, H, C).transpose(0, 1)
            att = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(C), dim=-1)
            o = (att @ vh).transpose(0, 1).reshape(T, n)
            z = z + o @ u.T
            wm, xm = w(M * n, n, 0.4, n), w(n, M * n, 1.6, M * n)
            s = torch.nn.functional.layer_norm(z, (n,), eps=1e-6)
            z = z + torch.nn.functional.gelu(s @ wm.T) @ xm.T
            ps += [q, k, v, u, wm, xm]
        head = w(512, n, 1.0, n)
        ps.append(head)
        out = torch.nn.functional.layer_norm(z, (n,), eps=1e-6) @ head.T
        cot = torch.randn(out.shape, generator=g, dtype=dt) / math.sqrt(out.shape[1])
        grads = torch.autograd.grad((out * cot).sum(), ps)
        return [float((gr * gr).sum()) for gr in grads]

    sample()  # warm-up
    t = time.perf_counter()
    for _ in range(a.samples):
        sample()
    dt_s = time.perf_counter() - t
    print(f"{a.samples / dt_s:.3f} samples/s")


if __name__ == "__main__":
    main()
