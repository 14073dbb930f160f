import sys

from diffinv.cli import main

sys.exit(main())
