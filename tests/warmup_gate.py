"""A registered torch module (``[torch] entry_point = "tests.warmup_gate:gated_linear"``) whose
gradient passes wait at a gate, so a test can look at a server while its warm-up is running.

The module computes the same map as ``tests.support.region_logit_model`` given the same weights
(flatten, then a linear layer). Every forward pass with gradients is recorded (its batch size)
in :data:`GRAD_BATCHES`; while :data:`GATE` is closed it signals :data:`WAITING` and waits.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

GATE = threading.Event()
WAITING = threading.Event()
GRAD_BATCHES: list[int] = []
SIZE = 16
CLASSES = 2


class GatedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            GRAD_BATCHES.append(int(x.shape[0]))
            WAITING.set()
            GATE.wait(timeout=120)
        return self.fc(x.flatten(1))  # type: ignore[no-any-return]


def gated_linear() -> nn.Module:
    return GatedLinear()
