"""What people use against a served model and a TritonResNet: classification, the tutorial's
preprocessing, and ``tritonresnet status`` in words. Never imports the controller."""
