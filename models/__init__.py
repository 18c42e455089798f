"""Speech-enhancement architectures, the model registry, the shipped default model."""
