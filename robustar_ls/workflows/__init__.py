"""Multi-step jobs over opened objects: sync then train, influence run and write-back, the
training-job runner, the demo and the Label Studio launcher. The layer above ``train/``,
``explain/`` and ``labelstudio/``; only ``backend/`` and ``cli/`` import it."""
