"""EfficientNet-Lite1 agreement with fp32 on N real crops (more than the benches' 200), per recipe.

    python bench/lite_agreement.py 600 w8a8-pc,w8a16-res,w8a16-res+equalize=true [--json out.json]

The first 200 of ``crops(N, seed=0)`` are the benches' evaluation crops; 64 calibration crops
``crops(64, seed=1)``; the integer program (``q.run``). Prints agreement, the flipped crops and
their fp32 top-2 margins (near-ties flip on any noise). Threads: env T (default 1).
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))
import efficientnet_lite as ex  # noqa: E402
import edgequant as eq  # noqa: E402
from real_accuracy import parse_recipe  # noqa: E402
torch.set_num_threads(int(os.environ.get("T", "1")))
N = int(sys.argv[1]); specs = sys.argv[2].split(",")
m = ex.model().eval()
cx, _ = ex.crops(64, seed=1)
xs, _ = ex.crops(N, seed=0)
with torch.no_grad():
    ref = torch.cat([m(xs[i:i+32]) for i in range(0, N, 32)]).numpy()
top = np.sort(ref, 1)
margin = top[:, -1] - top[:, -2]
r1 = ref.argmax(1)
out = {}
for spec in specs:
    t = time.time()
    q = eq.quantize(m, parse_recipe(spec), [cx[i:i+16] for i in range(0, 64, 16)])
    y = np.concatenate([q.run(xs[i:i+16].numpy()) for i in range(0, N, 16)])
    flip = np.nonzero(y.argmax(1) != r1)[0]
    out[spec] = flip.tolist()
    print(spec, f"agree {100*(1-len(flip)/N):.2f}% flips {len(flip)} margins {np.round(margin[flip],4).tolist()} {time.time()-t:.0f}s", flush=True)
if "--json" in sys.argv:
    with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
        json.dump({"margin": margin.tolist(), "flips": out}, f)
