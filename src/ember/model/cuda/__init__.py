"""The CUDA forward pass: weights in device memory, step inputs, activation buffers, graphs."""
