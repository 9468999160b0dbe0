import sys

from cvload.cli import main

sys.exit(main())
