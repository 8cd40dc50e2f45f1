"""The commands behind the CLI: one function per job, the exit-code table, cancel and the JSON progress protocol."""
