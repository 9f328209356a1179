"""The tritonresnet builder: ONNX in S3 to TensorRT plans and a Triton model repository."""
