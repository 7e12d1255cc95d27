"""One module per inference runtime; each imports its runtime only when an engine is made.

torch_engine (PyTorch), onnxruntime_engine (ONNX Runtime on CPU), tensorrt_engine (TensorRT on
an NVIDIA GPU); onnx_files is the ONNX file contract the last two and engines.export share,
tensorrt_plan builds and caches TensorRT plans from it.
"""
