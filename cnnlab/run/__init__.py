"""The owner of a run folder: its layout (every file name), what a checkpoint records, loading a run
back and scoring with it, the one-writer lock, and the rules for what a stored config may run."""
