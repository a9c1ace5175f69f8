"""quikgen: render a readable PyTorch training repository and keep it current."""

__version__ = "0.7.1"
