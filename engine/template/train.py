"""
A small GPT trained for a fixed time budget: the file the research agent edits.

Run it through the harness (`cockpit train`), which times the training phase, evaluates the
trained model on the pinned validation tokens and reports val_bpb. The harness's rules: import
only torch and harness.runtime; train while `rt.done()` is False; hand the model to
`rt.submit(model)`, which ends the run. `model(idx)` must return logits (B, T, vocab) that depend
only on earlier positions of the same row, and must be exportable with torch.export: a pure
tensor function (no Python branches on tensor values, no state changed in forward).

Model: rotary embeddings, QK-norm, ReLU² MLP, untied embeddings, logit soft-capping; value
embeddings (a second token embedding added to the attention values, gated per head) on every
other layer; before each block the residual stream is re-mixed with the first layer's input by
two learned scalars.
Optimiser: Muon for the block matrices, AdamW for the embeddings, the output head and the scalars.
Schedules are driven by the fraction of the time budget used, not by step counts.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import runtime as rt

P = rt.profile()
GPU = P.device == "cuda"

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly). "a if GPU else b": a on CUDA, b on CPU/MPS.
# ---------------------------------------------------------------------------
DEPTH = 8 if GPU else 4                      # transformer blocks
MODEL_DIM = 512 if GPU else 128              # residual stream width
HEAD_DIM = 128 if GPU else 32                # width of one attention head
MLP_RATIO = 4                                # MLP hidden width = MLP_RATIO * MODEL_DIM
LOGIT_CAP = 15.0                             # soft cap: logits = cap * tanh(logits / cap)
DEVICE_BATCH = 128 if GPU else 16            # rows per micro-batch (row length fixed by the harness)
TOTAL_BATCH_TOKENS = 2**18 if GPU else 2**12 # tokens per optimizer step (gradient accumulation)
VE_GATE_CHANNELS = 32                        # value-embedding gate reads this many residual channels
MATRIX_LR = 0.04                             # Muon, block matrices
EMBED_LR = 0.6                               # AdamW, token and value embeddings
UNEMBED_LR = 0.004                           # AdamW, output head
SCALAR_LR = 0.5                              # AdamW, the x0 mixing scalars (residual scalars: 1/100 of it)
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = 0.95                         # reached after MUON_WARMUP_STEPS, from MUON_MOMENTUM_START
MUON_MOMENTUM_START = 0.85
MUON_WARMUP_STEPS = 300 if GPU else 30
WEIGHT_DECAY = 0.2                           # decoupled, on the Muon matrices (decays with the LR)
WARMUP_FRAC = 0.0                            # LR warm-up, as a fraction of the budget
WARMDOWN_FRAC = 0.5                          # linear LR decay over the last part of the budget
FINAL_LR_FRAC = 0.0                          # LR at the end, relative to the peak
SEED = 42

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim, max_len, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)  # (1, T, 1, D/2)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)

    def forward(self, x):  # x: (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, head_dim, rotary, value_embed):
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.rotary = rotary
        # per-head gate in (0, 2) on the value embedding, read from the first channels of x
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_head, bias=False) if value_embed else None

    def forward(self, x, ve=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)  # each (B, T, H, D)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS])).unsqueeze(-1)  # (B, T, H, 1)
            v = v + gate * ve.view(B, T, self.n_head, self.head_dim).to(v.dtype)
        q, k = self.rotary(norm(q)).to(v.dtype), self.rotary(norm(k)).to(v.dtype)  # QK-norm, then rotary
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, dim, head_dim, rotary, value_embed):
        super().__init__()
        self.attn = Attention(dim, head_dim, rotary, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, x0, resid_lambda, x0_lambda, ve):
        x = resid_lambda * x + x0_lambda * x0
        x = x + self.attn(norm(x), ve)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab, dim, depth, head_dim, seq_len):
        super().__init__()
        rotary = Rotary(head_dim, seq_len)
        self.wte = nn.Embedding(vocab, dim)
        # value embeddings on alternating layers, the last one included
        self.ve_layers = [i for i in range(depth) if i % 2 == (depth - 1) % 2]
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, dim) for i in self.ve_layers})
        self.blocks = nn.ModuleList([Block(dim, head_dim, rotary, i in self.ve_layers) for i in range(depth)])
        self.resid_lambdas = nn.Parameter(torch.ones(depth))  # x <- resid_lambda * x + x0_lambda * x0
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))
        self.lm_head = nn.Linear(dim, vocab, bias=False)  # untied from wte
        self.embed, self.head = self._embed, self._head  # replaced by compiled versions on CUDA

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        inputs = [ve.weight for ve in self.value_embeds.values()]
        inputs += [lin.weight for blk in self.blocks for lin in (blk.attn.qkv, blk.mlp.fc)]
        for w in inputs:
            bound = math.sqrt(3.0 / w.size(1))  # uniform with std 1/sqrt(row width)
            nn.init.uniform_(w, -bound, bound)
        for blk in self.blocks:
            nn.init.zeros_(blk.attn.proj.weight)  # each block starts as the identity
            nn.init.zeros_(blk.mlp.proj.weight)
            if blk.attn.ve_gate is not None:
                nn.init.zeros_(blk.attn.ve_gate.weight)  # gate 1 at the start

    def _embed(self, idx):
        """The normed token embedding and each value-embedding layer's lookup (in the autocast
        dtype when autocast is on: they only ever meet the bf16 attention values)."""
        x0 = norm(self.wte(idx))
        dev = idx.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x0.dtype
        return x0, {i: self.value_embeds[str(i)](idx).to(dt) for i in self.ve_layers}

    def _head(self, x, targets):
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_CAP * torch.tanh(logits / LOGIT_CAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def forward(self, idx, targets=None):  # idx: (B, T) -> logits (B, T, V) or the mean loss
        x0, ves = self.embed(idx)
        x = x0
        for i, blk in enumerate(self.blocks):
            x = blk(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], ves.get(i))
        return self.head(x, targets)

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 per matrix weight, plus attention scores (causal, halved)."""
        embeds = [self.wte.weight, *(ve.weight for ve in self.value_embeds.values())]
        n = sum(p.numel() for p in self.parameters()) - sum(e.numel() for e in embeds)
        attn = 6 * len(self.blocks) * MODEL_DIM * seq_len  # 12 * L * D * T / 2
        return 6 * n + attn


# ---------------------------------------------------------------------------
# Optimiser: Muon (orthogonalised momentum) for matrices, AdamW for the rest
# ---------------------------------------------------------------------------


@torch.no_grad()
def newton_schulz(G, steps=5):
    """Approximately orthogonalise each matrix of G (..., m, n) with a quintic Newton-Schulz
    iteration (coefficients from the Muon write-up); runs in bf16 on CUDA."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised per matrix; matrices of one shape are stacked so each
    group costs one batched Newton-Schulz."""

    def __init__(self, params, lr, momentum, weight_decay=0.0):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.stacks = {}
        for group in self.param_groups:
            for p in group["params"]:
                self.stacks.setdefault(tuple(p.shape), []).append(p)
        self.buffers = {s: torch.zeros((len(ps), *s), device=ps[0].device) for s, ps in self.stacks.items()}

    @torch.no_grad()
    def step(self):
        group = self.param_groups[0]
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        for shape, ps in self.stacks.items():
            grads = torch.stack([p.grad for p in ps])
            buf = self.buffers[shape]
            buf.lerp_(grads, 1 - mom)
            update = newton_schulz(grads.lerp_(buf, mom))  # Nesterov
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_add_(ps, list(update.unbind(0)), alpha=-lr * scale)


def lr_multiplier(frac):
    if frac < WARMUP_FRAC:
        return frac / WARMUP_FRAC
    if frac < 1.0 - WARMDOWN_FRAC:
        return 1.0
    progress = (1.0 - frac) / WARMDOWN_FRAC
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(progress, 0.0)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
if GPU:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
T = P.seq_len
VOCAB = rt.vocab_size()
model = GPT(VOCAB, MODEL_DIM, DEPTH, HEAD_DIM, T).to(P.device)
model.init_weights()
rt.model_info(flops_per_token=model.flops_per_token(T))
if P.compile:
    # Regional compilation: the blocks share code, so Dynamo compiles two graphs (with and
    # without a value embedding) and reuses them.
    for blk in model.blocks:
        blk.compile(dynamic=False)
    model.embed = torch.compile(model._embed, dynamic=False)
    model.head = torch.compile(model._head, dynamic=False)

matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
dim_scale = (MODEL_DIM / 768) ** -0.5  # AdamW LRs were tuned at width 768
adam = torch.optim.AdamW(
    [
        dict(params=[model.wte.weight, *(ve.weight for ve in model.value_embeds.values())], lr=EMBED_LR * dim_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBED_LR * dim_scale),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
    ],
    betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=GPU,
)
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
optimizers = [adam, muon]
for opt in optimizers:
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]

rows = DEVICE_BATCH
if GPU and torch.cuda.get_device_properties(P.device).total_memory < 64e9:
    rows = max(1, DEVICE_BATCH // 2)  # 128 rows of the default model peak at ~52 GB: halve on smaller cards
accum = max(1, TOTAL_BATCH_TOKENS // (rows * T))
batches = rt.train_batches(rows, T, seed=SEED)
n_params = sum(p.numel() for p in model.parameters())
print(f"params: {n_params:,}  batch: {accum} x {rows} x {T} tokens  budget: {P.time_budget:g}s", flush=True)

step = 0
t_start = time.time()
while not rt.done():
    lrm = lr_multiplier(rt.fraction())
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lrm
    warm = min(1.0, step / MUON_WARMUP_STEPS)
    muon.param_groups[0]["momentum"] = MUON_MOMENTUM_START + (MUON_MOMENTUM - MUON_MOMENTUM_START) * warm
    for _ in range(accum):
        x, y = next(batches)
        with rt.autocast():
            loss = model(x, y)
        (loss / accum).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    rt.progress(step, loss.detach(), tokens=accum * rows * T)
    step += 1
    if step % 100 == 0:
        print(f"step {step:5d}  loss {loss.item():.4f}  frac {rt.fraction():.3f}", flush=True)

# Short greppable summary for humans; the harness records its own numbers, not these lines.
print("---")
print(f"training_seconds: {rt.fraction() * P.time_budget:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"num_steps:        {step}")
print(f"num_params:       {n_params}")
print(f"depth:            {DEPTH}", flush=True)

# The run ends here: the harness exports model(idx) (torch.export) and scores it in a separate
# process; val_bpb is in the harness's lines of the log and in the results table.
rt.submit(model)
