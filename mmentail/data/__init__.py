"""Reading and validating pairs CSVs and their images, splitting them, TFRecord shards."""
