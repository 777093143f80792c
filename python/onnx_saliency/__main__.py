"""`python -m onnx_saliency`: the `onnx-saliency` command."""

import sys

from .cli import main

sys.exit(main())
