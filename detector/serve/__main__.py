"""``python -m detector.serve CHECKPOINT_OR_ONNX [--host 127.0.0.1] [--port 8000] ...``"""

import sys

from detector.serve.settings import main

if __name__ == "__main__":
    sys.exit(main())
