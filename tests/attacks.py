"""What the harness's tests share: fast limits, the attacker's escape hatch, and the uniform model
(its val_bpb known exactly). A test module builds its train.py preludes from these pieces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness import runner
from harness.dataset import current_dataset
from harness.profiles import CPU

FAST = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0)

HEAD = '''
import time
import torch
import torch.nn.functional as F
from harness import runtime as rt
'''

# The escape hatch: any Python source, run inside train.py's process, past the guard.
ATTACK = '''
def attack(name, src, **values):
    g = dict(values)
    src = "import os, sys, gc, json, socket, subprocess, pathlib, glob\\n" + src
    try:
        torch.fx.graph_module._exec_with_source(src, g)
        print(f"ATTACK {name}: " + str(g.get("result", "done")), flush=True)
    except Exception as e:
        print(f"ATTACK {name}: blocked ({type(e).__name__}: {e})", flush=True)
    return g
'''

UNIFORM = '''
V = rt.vocab_size()

class Uniform(torch.nn.Module):
    """Every token equally likely: its val_bpb is known exactly."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
    def forward(self, idx):
        return torch.zeros(*idx.shape, V) + self.w * 0
'''


def uniform_bpb(cache: Path) -> float:
    """What the harness must record for the uniform model: ln(V) nats per scored token."""
    d = current_dataset(cache)
    T = CPU.seq_len
    val = np.asarray(d.stream("val"))
    n = min((len(val) - 1) // T, CPU.eval_tokens // T)
    nb = d.token_bytes[val[1 : n * T + 1]]
    return int((nb > 0).sum()) * math.log(d.vocab_size) / (math.log(2) * int(nb.sum()))
