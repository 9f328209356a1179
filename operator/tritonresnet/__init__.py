"""tritonresnet: a Kubernetes operator serving ONNX ResNets through TensorRT and Triton."""
