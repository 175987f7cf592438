"""edgequant: how far can this model be quantized?"""
