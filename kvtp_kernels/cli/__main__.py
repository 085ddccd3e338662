"""``python -m kvtp_kernels.cli``: the ``kvtp`` command without the console script."""

import sys

from . import main

sys.exit(main())
