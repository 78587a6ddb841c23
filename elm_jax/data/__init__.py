"""Input pipelines: sources, SentencePiece tokenization, grain pipelines, the embedded corpus.

Importing this package is cheap: grain, tfds and sentencepiece load inside the functions that use
them, so configs can be validated on machines that only read them.
"""
