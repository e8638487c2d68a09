"""BERT in tf_keras, TF Hub-format text modules built offline, checkpoint conversion."""
