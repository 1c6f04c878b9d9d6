"""Fleetwire ML worker: consumes the ml-infer BullMQ queue and serves ONNX models with onnxruntime."""
