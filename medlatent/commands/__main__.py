"""``python -m medlatent.commands ...`` (e.g. under ``torchrun``): the same as the ``medlatent`` script."""

import sys

from medlatent.commands.cli import main

sys.exit(main())
