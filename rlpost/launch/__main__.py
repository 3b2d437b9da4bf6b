"""``python -m rlpost.launch submit|jobs|plan|launch ...`` (the same commands as ``rlpost``)."""

import sys

from rlpost.launch.cli import main

sys.exit(main())
