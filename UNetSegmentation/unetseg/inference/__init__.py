"""The predictor: prepare a volume, run windows through a backend (torch or ONNX Runtime), restore, post-process."""
