"""``python -m robustar_ls.cli``."""

import sys

from robustar_ls.cli.main import main

sys.exit(main())
