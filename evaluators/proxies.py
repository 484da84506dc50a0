"""Zero-cost proxies: a score from one forward/backward pass at initialization, no training.

- synflow (Tanaka et al. 2020): Σ|θ ⊙ ∂R/∂θ| with R = Σ f(1) on the network with |θ|, data-free.
- naswot (Mellor et al. 2021): log|det K| of the Hamming-similarity kernel of activation patterns on a batch.
- grad_norm: Σ‖∂L/∂θ‖ of the cross-entropy on a batch.
- snip (Lee et al. 2019): Σ|θ ⊙ ∂L/∂θ| on a batch.
Higher is "better" for all four. Every score is deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluators.data import trained_arch
from search_space import Arch, build_model

PROXIES = ("synflow", "naswot", "grad_norm", "snip")


class ProxyError(ValueError):
    """Unknown proxy name."""


def _batch(data: Any, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data.y_train), size=min(batch_size, len(data.y_train)), replace=False)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[np.sort(idx)])).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, 3, 1, 1)
    y = torch.from_numpy(np.array(data.y_train, dtype=np.int64)[np.sort(idx)])
    return (x - mean) / std, y


def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model = model.double().eval()  # eval: BN uses its init statistics, so the score stays data-free
    with torch.no_grad():
        signs = {n: p.sign() for n, p in model.state_dict().items()}
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    out = model(torch.ones_like(x[:1], dtype=torch.float64))
    out.sum().backward()
    score = sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        for n, p in model.state_dict().items():
            p.mul_(signs[n])
    return math.log(score) if score > 0 else -math.inf  # log: raw synflow spans hundreds of decades


def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        codes.append((out.detach() > 0).flatten(1).float())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.ReLU | nn.ReLU6 | nn.Hardswish)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    c = torch.cat(codes, dim=1).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else -math.inf


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_grads(model, x, y)
    return sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_grads(model, x, y)
    return sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)


_FUNCS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "synflow": synflow, "naswot": naswot, "grad_norm": grad_norm, "snip": snip}


def proxy_score(name: str, arch: Arch, data: Any, seed: int = 0, batch_size: int = 64, threads: int = 2) -> float:
    """The zero-cost score `name` of `arch` on `data` (built at the data's resolution and class count)."""
    if name not in _FUNCS:
        raise ProxyError(f"proxy {name!r} not in {{{', '.join(PROXIES)}}}")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = build_model(trained_arch(arch, data), seed=seed)
        x, y = _batch(data, batch_size, seed)
        return _FUNCS[name](model, x, y)
    finally:
        torch.set_num_threads(prev)
