"""labkeeper: a shared GPU server run as a managed multi-user lab on Kubernetes."""

__version__ = "0.1.0"
