"""`python -m ar1_jax.cli ...` is `ar1 ...`."""

import sys

from ar1_jax.cli.main import main

sys.exit(main())
