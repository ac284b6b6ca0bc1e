import sys

from distx.cli import main

sys.exit(main())
