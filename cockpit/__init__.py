"""cockpit: a terminal research cockpit for autonomous ML experiments."""

__version__ = "0.1.0"
