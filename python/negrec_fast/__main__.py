import sys

from negrec_fast.cli import main

sys.exit(main())
