"""The test ground: a real Kubernetes control plane, emulated GPU nodes, S3 and Triton on one CPU machine."""
