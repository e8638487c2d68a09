"""Where pairs and hub modules come from: the generated demo, the real data set's download."""
