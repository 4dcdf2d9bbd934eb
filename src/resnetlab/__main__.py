"""`python -m resnetlab ...` (also what `torchrun -m resnetlab train ...` runs)."""
import sys

from resnetlab.entry import main

sys.exit(main())
