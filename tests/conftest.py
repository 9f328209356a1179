"""Test-suite wiring: the test ground's fixtures come from plugin modules.

Layout: ``tests/unit`` needs nothing running; ``tests/integration`` starts one
real component (control plane, tritonserver, S3); ``tests/e2e`` runs the
operator against the whole test ground.
"""

pytest_plugins = [
    "testground.fixtures",
]
