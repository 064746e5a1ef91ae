"""A small SAE on SmolLM2's layer-15 residual, trained with and without sinkhole's token mask.

    python examples/sae_mask.py                         # the table in docs/interp.md
    python examples/sae_mask.py --train-chunks 256 --epochs 2 --cache /tmp/acts.npz

1. Text: Python's own documentation (pydoc_data, shipped with CPython), cut into chunks of
   --context tokens: --train-chunks for training, --eval-chunks held out.
2. One forward per batch gives both the activations and the mask: `sinkhole.token_mask` runs its
   plain-speed forward while a hook (sinkhole.probe.hooks.hooked) keeps decoder layer 15's output.
   The mask is the one at the SAE's layer: spike = ||h_15[t]|| > threshold x the chunk's median;
   sink = the project's sink rule (all layers). Masked = spike or sink.
3. Two ReLU SAEs (plain torch: L1 penalty on f * ||W_dec||, unit-norm decoder columns, Adam), same
   seed, same width, same number of training tokens (--epochs passes over --train-chunks' token
   count): one sees every token, the other only the unmasked ones (drawn to the same count).
   Inputs are scaled once, by the unmasked training tokens' mean norm, to sqrt(d).
4. On the held-out chunks: explained variance on unmasked tokens (1 - sum ||x - x_hat||^2 / sum
   ||x - mean||^2), L0 on unmasked tokens, dead features (never active on any held-out token),
   and the masked tokens' share of the summed squared error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def collect(args) -> dict[str, np.ndarray]:
    from sinkhole.mask.compute import MaskSettings, iter_masks
    from sinkhole.probe.hooks import hooked, observer
    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe("smollm2-135m", log=lambda m: None)
    text = " ".join(__import__("pydoc_data.topics", fromlist=["topics"]).topics.values())
    ids = probe.tokenizer(text)["input_ids"]
    n = args.train_chunks + args.eval_chunks
    if len(ids) < n * args.context:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than {n} x {args.context}")
    chunks = [ids[i * args.context : (i + 1) * args.context] for i in range(n)]
    layer = probe.lm.family.decoder_layers(probe.model)[args.layer]
    outs: list[torch.Tensor] = []
    acts = np.zeros((n, args.context, probe.info.d_model), np.float32)
    fields = {k: np.zeros((n, args.context), bool) for k in ("spike", "sink")}
    settings = MaskSettings(layer=args.layer)
    t0, done = time.time(), 0
    with hooked(forward=[(layer, observer(outs.append))]):
        for batch in iter_masks(probe, chunks, settings, max_batch_tokens=4096):
            h = outs.pop()  # (B, T, D): this batch's forward, sequences in batch order, no padding
            assert not outs and h.shape[0] == len(batch)
            for row, (i, m) in enumerate(batch):
                acts[i] = h[row].float().numpy()
                fields["spike"][i], fields["sink"][i] = m.spike, m.sink
            done += len(batch)
            print(f"\r  {done} / {n} chunks, {time.time() - t0:.0f} s", end="", flush=True)
    print()
    return {"acts": acts, **fields}


class SAE(torch.nn.Module):
    def __init__(self, d: int, width: int, b_dec: torch.Tensor, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(width, d, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w.clone())  # (width, d), unit rows
        self.W_enc = torch.nn.Parameter(w.t().clone())  # (d, width)
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(b_dec.clone())

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def forward(self, x):
        f = self.encode(x)
        return f @ self.W_dec + self.b_dec, f


def train(x: torch.Tensor, args, seed: int) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(x.shape[1], args.width, x.mean(0), seed)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    steps = args.budget // args.batch
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=g) for _ in range(-(-args.budget // len(x)))])
    for step in range(steps):
        xb = x[order[step * args.batch : (step + 1) * args.batch]]
        x_hat, f = sae(xb)
        mse = (x_hat - xb).pow(2).sum(-1).mean()
        l1 = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + args.l1 * l1
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
    return sae


@torch.no_grad()
def evaluate(sae: SAE, x: torch.Tensor, masked: torch.Tensor) -> dict:
    x_hat, f = sae(x)
    err = (x - x_hat).pow(2).sum(-1)
    keep = ~masked
    xu = x[keep]
    return {
        "ev_unmasked": float(1 - err[keep].sum() / (xu - xu.mean(0)).pow(2).sum()),
        "ev_all": float(1 - err.sum() / (x - x.mean(0)).pow(2).sum()),
        "l0_unmasked": float((f[keep] > 0).float().sum(-1).mean()),
        "dead_share": float(((f > 0).sum(0) == 0).float().mean()),
        "masked_loss_share": float(err[masked].sum() / err.sum()) if masked.any() else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--train-chunks", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=128)
    ap.add_argument("--width", type=int, default=2048, help="SAE features (d_model 576)")
    ap.add_argument("--epochs", type=float, default=3, help="token budget = epochs x training tokens")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (inputs scaled to norm sqrt(d))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="keep / reuse the collected activations and masks here (.npz)")
    args = ap.parse_args()
    t0 = time.time()
    if args.cache and args.cache.is_file():
        data = dict(np.load(args.cache))
    else:
        data = collect(args)
        if args.cache:
            np.savez(args.cache, **data)
    n_train = args.train_chunks
    acts = torch.from_numpy(data["acts"]).flatten(0, 1)
    masked = torch.from_numpy(data["spike"] | data["sink"]).flatten()
    split = n_train * args.context
    x_tr, m_tr, x_ev, m_ev = acts[:split], masked[:split], acts[split:], masked[split:]
    scale = (x_tr.shape[1] ** 0.5) / x_tr[~m_tr].norm(dim=-1).mean()
    x_tr, x_ev = x_tr * scale, x_ev * scale
    args.budget = int(args.epochs * len(x_tr))
    print(
        f"# layer {args.layer}, {len(x_tr)} training tokens ({int(m_tr.sum())} masked: "
        f"{int(data['spike'][:n_train].sum())} spike, {int(data['sink'][:n_train].sum())} sink), "
        f"{len(x_ev)} held-out ({int(m_ev.sum())} masked); width {args.width}, l1 {args.l1}, "
        f"{args.budget} training tokens each; masked tokens' mean norm / unmasked: "
        f"{float(x_tr[m_tr].norm(dim=-1).mean() / x_tr[~m_tr].norm(dim=-1).mean()):.1f}"
    )
    print(
        "| SAE trained on | EV, unmasked held-out | EV, all held-out | L0, unmasked | dead features | "
        "masked tokens' share of squared error |"
    )
    print("|---|---|---|---|---|---|")
    for name, x in (("every token", x_tr), ("unmasked tokens (sinkhole mask)", x_tr[~m_tr])):
        r = evaluate(train(x, args, args.seed), x_ev, m_ev)
        print(
            f"| {name} | {r['ev_unmasked']:.3f} | {r['ev_all']:.3f} | {r['l0_unmasked']:.1f} | "
            f"{100 * r['dead_share']:.1f}% | {100 * r['masked_loss_share']:.1f}% |",
            flush=True,
        )
    print(f"# {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
