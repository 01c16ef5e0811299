"""Optimisers: LARS's trust ratio is that of SimCLR's and BYOL's reference code, which timm's Lars is not."""

from __future__ import annotations

import torch

from training.optim import LARS


def one_step(optimizer_class, w0: torch.Tensor, g: torch.Tensor, weight_decay: float, **kwargs) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = optimizer_class([{"params": [w], "weight_decay": weight_decay}], lr=0.5, momentum=0.9, **kwargs)
    w.grad = g.clone()
    opt.step()
    return w.detach()


def test_lars_scales_the_update_by_eta_w_over_the_norm_of_the_update():
    w0, g = torch.tensor([3.0, -4.0, 1.0]), torch.tensor([0.5, 2.0, -1.0])
    wd, eta = 0.1, 0.02
    d = g + wd * w0
    expected = w0 - 0.5 * d * (eta * w0.norm() / d.norm())
    torch.testing.assert_close(one_step(LARS, w0, g, wd, eta=eta), expected)
    torch.testing.assert_close(one_step(LARS, w0, g, 0.0, eta=eta), w0 - 0.5 * g)  # no decay: a plain SGD step


def test_timm_lars_uses_another_trust_ratio():
    from timm.optim import Lars

    w0, g = torch.tensor([3.0, -4.0, 1.0]), torch.tensor([0.5, 2.0, -1.0])
    ours = one_step(LARS, w0, g, 0.1, eta=0.02)
    timms = one_step(Lars, w0, g, 0.1, trust_coeff=0.02)  # eta * ||w|| / (||g|| + wd * ||w||): the paper's bound
    d = g + 0.1 * w0
    torch.testing.assert_close(timms, w0 - 0.5 * d * (0.02 * w0.norm() / (g.norm() + 0.1 * w0.norm() + 1e-8)))
    assert not torch.allclose(ours, timms)
