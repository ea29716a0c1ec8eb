"""nmt: a small, fast, honest neural machine translation toolkit."""

__version__ = "0.1.0"
