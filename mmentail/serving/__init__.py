"""The serving SavedModel: raw strings and image bytes in, probabilities and label out."""
