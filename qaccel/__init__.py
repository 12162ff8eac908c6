"""qaccel: design quantized neural-network accelerators, from number formats to bitstreams."""

__version__ = "0.1.0"
