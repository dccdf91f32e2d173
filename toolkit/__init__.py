"""Edge compression toolkit with a training core."""
__version__ = "0.1.0"
