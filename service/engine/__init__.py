"""The serving engine: ONNX Runtime, dynamic batching, sessions; free of FastAPI."""
