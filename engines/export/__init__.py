"""Offline tooling that turns a trained checkpoint into faster artefacts and measures them.

onnx_export (model.onnx, checked against PyTorch), int8 (dynamic and static int8 ONNX for
CPUs), bench (throughput and score drift of the backends on one checkpoint). TensorRT plans
are built by engines.serving.backends.tensorrt_plan, which the TensorRT backend also uses.
Serving never imports this package.
"""
