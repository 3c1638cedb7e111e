"""robustar-ls: remove spurious features from image-classification data, inside Label Studio."""

__version__ = "0.1.0"
