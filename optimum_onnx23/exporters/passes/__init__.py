"""Graph passes on the traced ONNX model, one per file; each module's docstring states what it
guarantees: `optimize` (onnxscript's optimizer minus its quadratic rules), `layer_replication`
(grow a shallow trace to every layer), `static_cache` (KV writes -> TensorScatter),
`inplace_states` (which states may share their buffer with their present)."""
