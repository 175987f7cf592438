"""``python -m edgequant`` = the ``edgequant`` command."""
import sys

from .cli import main

sys.exit(main())
