import sys

from olol.cli import main

sys.exit(main())
