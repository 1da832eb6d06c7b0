"""LiveAnim: drive a portrait with your face, live, through the LIA-X model."""

__version__ = "0.1.0"
