"""Models: classifier, ranker, embedder fine-tuning, bundle and evaluation metrics."""
