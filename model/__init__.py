"""Training, export and reference maths for the lstm-serve character LSTM.

Only `train.py`, `lstm.py`, `export.py` and `checkpoint.py` import torch; everything serving needs
(`config`, `tokenizer`, `reference`, `onnx_meta`) is torch-free.
"""
