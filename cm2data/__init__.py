"""cm2data: build, review, publish and train on checklist-reward datasets for tool-using agents."""

__version__ = "0.1.0"
