"""``python -m export`` = ``python -m export.onnx``."""

import sys

from export.onnx import main

if __name__ == "__main__":
    sys.exit(main())
