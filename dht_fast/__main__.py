import sys

from dht_fast.cli import main

sys.exit(main())
