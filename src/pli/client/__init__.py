"""The workstation side of end-to-end encryption: CA directory, sealing, the `pli` CLI."""
