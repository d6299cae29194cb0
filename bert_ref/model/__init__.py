"""The model below the encoder: configuration, presets, limits, precision policies, and the fast
kernels with the runtime (threads, OpenBLAS) under them. Imports only `bert_ref.ops` beneath it."""
