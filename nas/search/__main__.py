"""``python -m nas.search worker ...``: the entry point of a search's worker processes (see nas.search.worker)."""
import sys

from nas.search.worker import worker_main

sys.exit(worker_main())
