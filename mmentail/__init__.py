"""mmentail: multimodal entailment of (text, image) post pairs with TensorFlow.

Importing the package registers tensorflow-text's ops, which the exported
SavedModels need: load an export after `import mmentail` (or
`import tensorflow_text`), or loading fails with
"Op type not registered 'TFText>...'".
"""

import tensorflow_text as _tensorflow_text  # noqa: F401  (registers TFText ops)

# The one place the version is written: setup.cfg reads it (`attr:`), and
# `--version`, each run's config.json and each export's metadata report it.
__version__ = "0.1.0"
