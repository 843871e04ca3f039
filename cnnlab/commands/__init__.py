"""The subcommands, one module each: what ``cnnlab <command>`` runs (orchestration only)."""
