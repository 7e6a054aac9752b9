"""Front end: ONNX file → typed Graph IR (`load`). Owns file safety, external data, inlining, shape inference."""
from eetjit.frontend.loader import load, read_model_proto

__all__ = ["load", "read_model_proto"]
