"""``python -m expkit``: the ``expkit`` command."""

import sys

from expkit import console_main

sys.exit(console_main())
