"""The Celery side of the farm: the app, its settings for long GPU tasks, and task names."""
