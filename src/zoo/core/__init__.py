"""The small shared core: DataModule convention, callbacks, errors and the run helpers behind the
entry points."""
