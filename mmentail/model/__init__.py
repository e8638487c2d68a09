"""The multimodal Keras model: encoders, head, fusion."""
