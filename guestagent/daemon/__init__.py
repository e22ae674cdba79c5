"""The long-running agent: one event loop, jobs that can be turned on and off."""
