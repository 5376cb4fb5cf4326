"""What is written down: qemuprov.json, the installs on this machine, recipe lock files."""
