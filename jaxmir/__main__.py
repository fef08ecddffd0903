"""``python -m jaxmir``: the same as the ``jaxmir`` command."""

import sys

from jaxmir.cli import main

sys.exit(main())
