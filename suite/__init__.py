"""suite: do better ImageNet models transfer better? A reproducible transfer study on MLflow."""

__version__ = "0.1.0"
