"""forge: carry a generative model through its whole life, from raw files to a model that generates."""

__version__ = "0.1.0"
