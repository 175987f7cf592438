"""CPU seconds of one reconstruction step per EfficientNet-Lite1 layer (AdaRound) and block (BRECQ),
with the spatial window (``window``, default 784 positions) and on whole maps.

    python bench/recon_step_cost.py [--steps 3] [--window 784] [--full]

Random tensors of the real shapes at batch 32 (the step's cost does not depend on the values), the
real weights, forward + backward + Adam through ``brecq._Trainer.fit``'s objective. Prints per
unit and the sums, and ``sum x iterations``: the training part of a default-budget run (the
per-layer caching of inputs and targets, the calibration and the lowering come on top).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--window", type=int, default=784)
    ap.add_argument("--full", action="store_true", help="also time whole maps (slow at 120x120)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import edgequant as eq  # noqa: F401
    import efficientnet_lite as L
    from edgequant.api import capture_prepared
    from edgequant.reconstruct import find_units
    from edgequant.reconstruct.brecq import _Sim, _rec_loss, _make_ada, WeightGrid
    from edgequant.reconstruct.adaround import AdaRoundWeight
    from edgequant.reconstruct.window import sample_window

    torch.set_num_threads(args.threads)
    size = L.SIZES[L.variant()]
    g = capture_prepared(L.model(), torch.zeros(2, 3, size, size))
    sim = _Sim(g, {})
    rng = np.random.default_rng(0)

    def ada_for(n):
        w = n.params["weight"]
        s = np.abs(w).reshape(w.shape[0], -1).max(1) / 7 + 1e-8
        return AdaRoundWeight(w, s, -7 * np.ones(w.shape[0]), 7 * np.ones(w.shape[0]))

    def cost(nodes, entry, area):
        ada = {n.name: ada_for(n) for n in nodes if n.op in ("conv", "linear")}
        opt = torch.optim.Adam([a.v for a in ada.values()], 1e-3)
        x = torch.randn((32,) + tuple(sim.shapes[entry][1:]))
        t = torch.randn((32,) + tuple(sim.shapes[nodes[-1].name][1:]))
        c = time.process_time()
        for _ in range(args.steps):
            win = sample_window(nodes, entry, sim.shapes, area, rng)
            xi, ti = x, t
            if win is not None:
                b, o = win.boxes[entry], win.out
                xi, ti = x[:, :, b[0]:b[1], b[2]:b[3]], t[:, :, o[0]:o[1], o[2]:o[3]]
            y = sim.run(nodes, entry, xi, {k: a() for k, a in ada.items()}, win=win)[nodes[-1].name]
            loss = _rec_loss(y, ti, win, sim.shapes[nodes[-1].name]) + 0.01 * sum(a.regulariser(10.0) for a in ada.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.process_time() - c) / args.steps

    units = find_units(g)
    tot = {"ada_win": 0.0, "ada_full": 0.0, "brecq_win": 0.0, "brecq_full": 0.0}
    n_layers = 0
    for u in units:
        layers = [n for n in u.layers]
        if not layers:
            continue
        aw = sum(cost([n], n.inputs[0], args.window) for n in layers)
        af = sum(cost([n], n.inputs[0], 0) for n in layers) if args.full else float("nan")
        bw = cost(list(u.nodes), u.entry, args.window)
        bf = cost(list(u.nodes), u.entry, 0) if args.full else float("nan")
        n_layers += len(layers)
        tot["ada_win"] += aw; tot["ada_full"] += af; tot["brecq_win"] += bw; tot["brecq_full"] += bf
        print(f"{u.describe()[:60]:<60} {tuple(sim.shapes[u.output][2:])!s:<10} AdaRound step (sum of layers) "
              f"{aw:.3f}/{af:.3f} CPU-s  BRECQ step {bw:.3f}/{bf:.3f} CPU-s (window/full)", flush=True)
    print(f"{len(units)} units, {n_layers} layers. Sum of one step per layer (AdaRound): window {tot['ada_win']:.2f} CPU-s, "
          f"full {tot['ada_full']:.2f}; per unit (BRECQ): window {tot['brecq_win']:.2f}, full {tot['brecq_full']:.2f}")
    print(f"x default iterations: AdaRound 300 -> window {300 * tot['ada_win']:.0f} CPU-s (full {300 * tot['ada_full']:.0f}); "
          f"BRECQ 1000 -> window {1000 * tot['brecq_win']:.0f} CPU-s (full {1000 * tot['brecq_full']:.0f})")


if __name__ == "__main__":
    main()
