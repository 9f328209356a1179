"""The operator: a runtime of watches and a work queue around observe -> decide -> report, the pure
renderers of children, and the one adapter that writes to the API server."""
