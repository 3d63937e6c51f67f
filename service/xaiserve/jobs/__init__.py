"""Long-running operations (data-set evaluation, GAD fitting): state, progress, cancel."""
