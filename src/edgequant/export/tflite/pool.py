"""TFLite emitters for pooling: MAX_POOL_2D / AVERAGE_POOL_2D (explicit PAD where TFLite's SAME/VALID
padding does not match) and global means (MEAN)."""
from __future__ import annotations

import numpy as np

from ...errors import ExportError
from ...program import Instr
from .builder import PADDING
from .core import Emitter, register, same_pads


@register("maxpool", "avgpool", "avgpool_f")
def _pool(e: Emitter, ins: Instr) -> None:
    a = ins.attrs
    name_in = ins.inputs[0]
    if tuple(a.get("dilation", (1, 1))) != (1, 1):
        raise ExportError(f"layer '{ins.node}': TFLite pooling has no dilation (got {tuple(a['dilation'])})")
    if len(e.shape(name_in)) != 4:
        raise ExportError(f"layer '{ins.node}': only 2-D pooling exports to TFLite")
    x = e.get(name_in, "nhwc")
    kernel, stride = tuple(a["kernel"]), tuple(a["stride"])
    t, b, l, r = a["padding"]
    eb, er = a.get("extra", (0, 0))
    n, c, h, w = e.shape(name_in)
    same, _ = same_pads((h, w), kernel, stride, (1, 1))
    integer = e.dtype(name_in) == "int8"
    if ins.op == "maxpool":
        # padded and ceil-mode positions never win a max: TFLite SAME (which skips them) or an
        # explicit pad with the lowest value are both exact
        pads = (t, b + eb, l, r + er)
        if pads == (0, 0, 0, 0) or pads == same:
            padding = "VALID" if pads == (0, 0, 0, 0) else "SAME"
        else:
            low = -128 if integer else -np.finfo(np.float32).max
            padding, x = "VALID", e.pad_op(x, ins.output, name_in, (n, h, w, c), pads, low)
        op = "MAX_POOL_2D"
    else:
        # TFLite averages over the window positions inside the input (SAME skips padding); with
        # count_include_pad the padding holds real zero (the zero point) and is counted
        include = bool(a["count_include_pad"])
        if (t, b, l, r) == (0, 0, 0, 0) and (eb, er) == (0, 0):
            padding = "VALID"
        elif not include and (t, b + eb, l, r + er) == same:
            padding = "SAME"
        elif include and (eb, er) == (0, 0):
            zp = int(e.p.tensors[name_in].qparams.zero_point) if integer else 0.0
            padding, x = "VALID", e.pad_op(x, ins.output, name_in, (n, h, w, c), (t, b, l, r), zp)
        else:
            raise ExportError(f"layer '{ins.node}': average pooling with padding {tuple(a['padding'])}, ceil_mode "
                              f"extra {tuple(a.get('extra', (0, 0)))} and count_include_pad={include} has no exact "
                              "TFLite equivalent (TFLite pads SAME and skips padded positions)")
        op = "AVERAGE_POOL_2D"
    out = e.define(ins.output, "nhwc")
    e.m.op(op, [x], [out], Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0], FilterWidth=kernel[1],
           FilterHeight=kernel[0], FusedActivationFunction=0)


@register("mean", "mean_f")
def _mean(e: Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    if len(e.shape(name_in)) != 4:
        raise ExportError(f"layer '{ins.node}': only the 2-D global mean (N, C, H, W) exports to TFLite")
    x = e.get(name_in, "nhwc")
    n, c = e.shape(name_in)[:2]
    axes = e.m.const(f"{ins.output}/axes", np.array([1, 2], np.int32))
    # keep_dims=True selects LiteRT's integer Mean kernel (requantize the sum, then divide by the
    # count, which the interpreter's gemmlowp mean mirrors); other forms take a float path
    keep = bool(ins.attrs.get("keepdim", True))
    out4 = e.define(ins.output, "nhwc", shape=(n, c, 1, 1)) if keep else \
        e.new(f"{ins.output}/4d", (n, 1, 1, c), like=ins.output)
    e.m.op("MEAN", [x, axes], [out4], KeepDims=True)
    if not keep:
        out = e.define(ins.output, "nchw")
        shape = e.m.const(f"{ins.output}/shape", np.array([-1, c], np.int32))
        e.m.op("RESHAPE", [out4, shape], [out], NewShape=[-1, c])
