"""Where the bundled model lives inside the package."""

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
BUNDLED_MODEL = ARTIFACTS / "shakespeare-lstm.onnx"
BUNDLED_CARD = ARTIFACTS / "MODEL_CARD.md"
# Checkpoints are rebuilt by `lstm-serve train`; only the ONNX file and its card are committed.
BUNDLED_CHECKPOINT = Path("build") / "shakespeare-lstm.pt"
