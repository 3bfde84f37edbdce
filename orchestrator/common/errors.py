"""The exceptions orch raises. The CLI turns them into one-line messages.

    OrchError
    ├── ScenarioError      bad scenario file or --set override (exit code 2)
    ├── ModelError         a model name or path that cannot be resolved
    ├── InstallError       building or finding an engine binary failed
    ├── ResultsError       the results folder cannot be written (not writable, disk full)
    │   └── RunFolderError a run folder orch will not use as it is: a link inside it, a name
    │                      too long for the filesystem, another sweep holding it (exit code 2)
    └── ServerError        a server did not become ready
        ├── ServerExited   the process died during start-up
        ├── ServerTimeout  no readiness before the deadline
        └── AuthRefused    it answered 401/403: orch's credentials are missing or wrong
"""

from __future__ import annotations

from os import PathLike


class OrchError(Exception):
    exit_code = 1


class ScenarioError(OrchError):
    exit_code = 2

    def __init__(self, path: str | PathLike[str], key: str, message: str):
        self.path, self.key, self.message = str(path), key, message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


class ModelError(OrchError):
    pass


class InstallError(OrchError):
    pass


class ResultsError(OrchError):
    pass


class RunFolderError(ResultsError):
    """The run folder itself is the problem, not the disk: what the user passed or left in it."""

    exit_code = 2


class ServerError(OrchError):
    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


class ServerExited(ServerError):
    def __init__(self, returncode: int, log_tail: str):
        super().__init__(f"server exited with code {returncode} during start-up", log_tail)
        self.returncode = returncode


class ServerTimeout(ServerError):
    pass


class AuthRefused(ServerError):
    """A 401 or 403 from any path orch asks: waiting or sending more would only repeat it."""

    STATUSES = (401, 403)

    def __init__(self, where: str, status: int):
        super().__init__(f"HTTP {status} from {where}: the server refuses orch's credentials")
        self.status = status
