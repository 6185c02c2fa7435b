"""ModelFlock: a Kubernetes operator for a portfolio of specialised LLMs."""

__version__ = "0.1.0"
