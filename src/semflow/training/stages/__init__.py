"""One module per DVC stage, each exposing a function of the same name."""
