"""``python -m rlpost.commands.launch submit|jobs|plan|launch ...`` (the same commands as ``rlpost``)."""

import sys

from rlpost.commands.launch.cli import main

sys.exit(main())
