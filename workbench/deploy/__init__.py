"""Deployment: export a trained network (TorchScript, ONNX) and serve a logged model over REST."""
