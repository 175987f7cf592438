"""QAT on CUDA: prepare -> a few training steps -> convert, with the model on the GPU.

Checks what CI (no GPU) cannot: every QAT parameter and buffer lives on the model's device, the
exact-integer forward and ``finetune`` run there, and the converted integer program (run on the
host by the interpreter) agrees with the trained module on the GPU. Prints the device and the
argmax agreement per recipe; exit 1 if anything left the GPU or agreement is below 99%.
Without CUDA it says so and exits 0. Finishes in well under a minute on a GPU machine.

    python bench/qat_cuda_check.py                 # on a GPU machine
    python bench/qat_cuda_check.py --device cpu    # the same checks on another device
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

import edgequant as eq

STEPS = 8


def check(recipe: str, calib, xs: np.ndarray, ys: np.ndarray, dev: torch.device) -> bool:
    t = time.perf_counter()
    model = eq.models.digits_cnn(pretrained=True).to(dev)
    qm = eq.qat.prepare(model, recipe, calib)
    tensors = list(qm.parameters()) + list(qm.buffers())
    on_dev = all(p.device.type == dev.type for p in tensors)
    torch.manual_seed(0)
    opt = torch.optim.Adam(qm.parameters(), lr=1e-3)
    it = iter(eq.data.digits_train(batch_size=64, seed=0))
    qm.train()
    for _ in range(STEPS):
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(qm(x.to(dev)), y.to(dev))
        loss.backward()
        opt.step()
    grads_on_dev = all(p.grad is None or p.grad.device.type == dev.type for p in qm.parameters())
    qm.eval()
    q = eq.qat.convert(qm)
    with torch.no_grad():
        want = qm(torch.from_numpy(xs).to(dev))
    out_dev = want.device.type
    want = want.cpu().numpy()
    got = q.run(xs)
    agree = float((want.argmax(1) == got.argmax(1)).mean()) * 100
    acc = float((got.argmax(1) == ys).mean()) * 100
    maxdiff = float(np.abs(want - got).max())
    ok = on_dev and grads_on_dev and out_dev == dev.type and agree >= 99.0
    print(f"{recipe:<14} params/buffers on {dev.type}: {on_dev}, grads: {grads_on_dev}, output on {out_dev}; "
          f"{STEPS} steps; agreement {agree:.2f}% (max |diff| {maxdiff:.2e}); program top-1 {acc:.2f}%; "
          f"{time.perf_counter() - t:.1f}s  {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def check_finetune(calib, dev: torch.device) -> bool:
    """``eq.qat.finetune`` moves batches to the model's device and trains there."""
    t = time.perf_counter()
    small = torch.utils.data.DataLoader(torch.utils.data.Subset(eq.data.digits_train().dataset, range(256)), batch_size=64)
    q = eq.qat.finetune(eq.models.digits_cnn(pretrained=True).to(dev), "w2a2-qat", small, calib, epochs=1, progress=False)
    dtype = next(q.qat_model.parameters()).device.type
    ok = dtype == dev.type
    print(f"finetune       trained on {dtype}; {time.perf_counter() - t:.1f}s  {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def main() -> int:
    forced = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else None  # e.g. cpu: test the script
    if forced is None and not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): nothing to check; run this on a GPU machine")
        return 0
    dev = torch.device(forced or "cuda")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    calib, test = eq.data.digits()
    xs = torch.cat([x for x, _ in test]).numpy()
    ys = torch.cat([y for _, y in test]).numpy()
    ok = all([check(r, calib, xs, ys, dev) for r in ("w4a4-qat", "w2a2-qat", "w1a1-xnor-qat")])
    ok = check_finetune(calib, dev) and ok
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
