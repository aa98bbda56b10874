"""Data families, one module each; registered by name in ``workbench.registry``."""
