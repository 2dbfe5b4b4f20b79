"""Pure functions that render every file a node runs with, from data, for cloud-init and the agent."""
