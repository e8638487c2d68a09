"""mmentail: multimodal entailment of (text, image) post pairs with TensorFlow.

Importing the package registers tensorflow-text's ops, which the exported
SavedModels need: load an export after `import mmentail` (or
`import tensorflow_text`), or loading fails with
"Op type not registered 'TFText>...'".
"""

import warnings

import tensorflow_text as _tensorflow_text  # noqa: F401  (registers TFText ops)

# tensorflow-hub 0.16.1 imports pkg_resources (hence setup.cfg's setuptools<82), which
# setuptools 80.9-81 announce as deprecated on every import: a line on every command's
# stderr that says nothing about mmentail. That warning alone is silenced.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API",
                        category=UserWarning)

# The one place the version is written: setup.cfg reads it (`attr:`), and
# `--version`, each run's config.json and each export's metadata report it.
__version__ = "0.1.0"
