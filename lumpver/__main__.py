import sys

from lumpver.cli import main

sys.exit(main())
