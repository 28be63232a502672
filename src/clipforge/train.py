"""``python -m clipforge.train ...``: the training entry for torchrun / srun (same flags as ``clipforge train``)."""
import sys

from clipforge.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
