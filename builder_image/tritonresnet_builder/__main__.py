"""``python -m tritonresnet_builder build|publish ...`` (what the test ground's node agent runs)."""

import sys

from tritonresnet_builder.cli import main

sys.exit(main())
