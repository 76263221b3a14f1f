"""`python -m electra_fast ...` (and `torchrun ... -m electra_fast pretrain ...`): the `electra-fast` command."""
import sys

from .cli import main

sys.exit(main())
