"""`lstm-serve bench`: the serving benchmark.

The bench starts the servers it measures as real processes (the product, a no-op FastAPI app as the HTTP floor,
the PyTorch-eager baseline), drives them from a separate load process with bounded, seeded loops, measures the
raw ONNX Runtime limit in-process, and writes results.json, a markdown report and PNG plots. Every comparison is
taken in the same run and reported as a ratio, since absolute times drift on a shared machine.
"""
