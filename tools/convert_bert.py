"""Convert a BERT checkpoint to TF Hub-format SavedModels (same as `mmentail-convert-bert`).

    python tools/convert_bert.py path/to/checkpoint converted/bert
"""

import sys

from mmentail.text.convert import main

if __name__ == "__main__":
    sys.exit(main())
