"""`electra-fast prepare`: the flags are PrepareConfig's fields (electra_fast.data.config); the command runs
electra_fast.prepare on them and prints what it wrote, or one line of error (exit 2), or a notice when interrupted
(exit 130)."""
from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_INTERRUPTED, BadInput
from ..options.cli import add_options, config_from, report_bad_input
from .config import PrepareConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, PrepareConfig)


def main(args: argparse.Namespace) -> int:
    """Runs `electra-fast prepare`; returns the exit status (2 for bad input, 130 when interrupted)."""
    from .prepare import prepare_corpus

    config = config_from(args, PrepareConfig)
    try:
        prepared = prepare_corpus(config)
    except (BadInput, OSError) as e:  # OSError: locking.FolderInUse, a full disk
        return report_bad_input("prepare", e)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue {config.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    index = prepared.index
    print(f"{config.out}: {prepared.tokens:,} tokens ({index['dtype']}) of {prepared.documents:,} documents in "
          f"{prepared.shards} shards" + (f"; {prepared.bad_lines:,} lines skipped as not UTF-8"
                                         if prepared.bad_lines else ""))
    return 0
