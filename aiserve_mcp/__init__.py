"""aiserve: an agent-native GPU marketplace and model-serving platform."""

__version__ = "0.1.0"
