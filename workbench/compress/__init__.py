"""Compression of a trained network: pruning, int8 quantization, knowledge distillation, and a
report of what each variant costs in accuracy and buys in size and latency."""
