"""The Flax models: pure modules that import nothing but their layers and the spec."""
