"""The tf.data input pipeline and the preprocessing it shares with serving."""
