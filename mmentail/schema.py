"""The names every stage agrees on: labels, CSV columns, feature keys, default handles.

A leaf module: it imports nothing, so configuration, data reading and tools can
use these names without loading TensorFlow.

Example:
    >>> LABELS.index("NoEntailment")
    2
    >>> [key for key in MODEL_INPUT_KEYS if key.startswith("image")]
    ['image_1', 'image_2']
"""

# Class order of every probability vector, confusion matrix and label index.
LABELS = ("Contradictory", "Implies", "NoEntailment")
# Columns of a pairs CSV (the Recognizing Multimodal Entailment schema).
COLUMNS = ("id_1", "text_1", "image_1", "id_2", "text_2", "image_2", "label")
# Which parts of a pair a model reads: `text` reads no image, `image` loads no text model.
MODALITIES = ("both", "text", "image")
# The three int32 tensors a BERT encoder takes.
BERT_INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
# The two decoded images a model takes (float32 RGB in 0..255).
IMAGE_KEYS = ("image_1", "image_2")
MODEL_INPUT_KEYS = (*BERT_INPUT_KEYS, *IMAGE_KEYS)
# The serving signature's inputs, each a batched tf.string.
EXPORT_INPUTS = ("text_1", "image_1", "text_2", "image_2")
# Images whose header claims more pixels are refused before decoding: 40 million (8000 x
# 5000) is above phone cameras and the 4096 x 4096 social networks keep; one image at the
# limit takes about 0.6 GB decoded (float32 RGB). The `max_pixels` arguments raise it.
MAX_IMAGE_PIXELS = 40_000_000

# A run's splits, in the order they are written and encoded.
SPLITS = ("train", "val", "test")

DEFAULT_PREPROCESS_HANDLE = "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"
DEFAULT_ENCODER_HANDLE = "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-2_H-256_A-4/2"
DEFAULT_CACHE_DIR = "~/.cache/mmentail"
# Elements a training shuffle holds at once: the real data set (1,400 pairs) is shuffled
# whole; a larger split streams through a buffer this size (`shuffle_buffer`).
DEFAULT_SHUFFLE_BUFFER = 4096
