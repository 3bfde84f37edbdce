"""Starting and stopping one server per cell (a local process, a Docker container, or an external URL), and `orch doctor`'s checks of what this host can launch."""
