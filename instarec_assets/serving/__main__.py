"""`python -m instarec_assets.serving [--host H] [--port P] ...`: the same as `instarec serve`."""

import sys

from instarec_assets.serving.server import main

sys.exit(main())
