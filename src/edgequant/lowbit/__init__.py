"""Below 8 bits without retraining: the post-training methods of Banner et al. (arXiv 1810.05723)
and binarization, as recipe options that lower to the same integer program.

* ``clip``            -- weight method "aciq": per-channel analytic clipping (observers/aciq.py).
* ``bit_alloc``       -- weight method "bit_alloc": per-channel widths, 2^M_i ~ alpha_i^(2/3).
* ``binary``          -- weight methods "xnor" (alpha_c * sign W) and "ternary" (TWN thresholds).
* ``bias_correction`` -- norm restoration of quantized weights and expected-error bias folding.
* ``edges``           -- "first and last layers stay 8-bit": which layers those are, their widths.
* ``binary_act``      -- lowering of 1-bit (binary) activation tensors and XNOR-popcount GEMMs.
* ``binary_calib``    -- 1-bit activations re-observed in order on the binarized upstream network.
* ``steps``           -- the post-training step that ``api.quantize`` runs before lowering.
* ``equalize``        -- cross-layer equalization (DFQ) on the float graph, before calibration.
* ``seq_bias``        -- sequential empirical bias correction (upstream quantization included).

Recipe options (``Recipe.options``): ``weight_method``, ``aciq_dist``, ``bit_alloc_min``,
``bit_alloc_max``, ``bias_correction`` ("banner" | "empirical" | "both" | "sequential"),
``bias_correction_samples``, ``equalize`` (True | "data" | "exact"), ``equalize_alpha``,
``first_last_bits``, ``fallback_weight_method``.
"""
