"""lstm-serve: a stateful character-LSTM served over HTTP with ONNX Runtime."""

__version__ = "0.1.0"
