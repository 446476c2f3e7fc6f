"""The agent's I/O: token sources, the notifier client, the webhook listener and the child process."""
