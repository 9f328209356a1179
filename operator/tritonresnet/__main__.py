"""``python -m tritonresnet``: the same as the ``tritonresnet`` command."""

from __future__ import annotations

import sys

from tritonresnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
