"""optimum-cli commands of optimum-onnx23 (registered through `optimum.commands.register`)."""
