"""The driver's connection to Ray for one sweep (`Session`): an embedded local cluster of
its own, or an existing cluster at an address (Ray Client tried again when its per-client
server starts late), with Ray's token authentication used when the user has a token.
`stepscope.orchestrator.scheduler` runs the sweep on it."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from stepscope.errors import one_line
from stepscope.orchestrator import cluster
from stepscope.orchestrator.cluster import ADDRESS, SchedulerError

#: Ray's logger for its token-authentication setup (ray/_private/authentication/).
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenAuthEnabledNotice(logging.Filter):
    """Ray 2.60 logs, whenever a new local cluster turns token authentication on by default,
    that it did so. For stepscope's own embedded cluster (on this machine, gone with the
    sweep) that is one line of noise on every run. Only that notice is dropped: the warning
    that authentication is *disabled* still prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextlib.contextmanager
def _without_token_auth_notice():
    logger, notice = logging.getLogger(_AUTH_LOGGER), _DropTokenAuthEnabledNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


#: Ray Client's proxy starts a server per client; on a loaded head that start can miss the
#: proxy's deadline ("Initialization failure from server") and succeed on the next try.
CLIENT_INIT_TRIES, CLIENT_INIT_PAUSE_S = 3, 2.0


def _init_with_retries(ray, address: str, options: dict) -> None:
    for attempt in range(1, CLIENT_INIT_TRIES + 1):
        try:
            ray.init(address=address, **options)
            return
        except ConnectionError as exc:
            retry = address.startswith("ray://") and "Initialization failure from server" in str(exc)
            if not retry or attempt == CLIENT_INIT_TRIES:
                raise
            time.sleep(CLIENT_INIT_PAUSE_S)


class Session:
    """A connection to Ray for one sweep: an embedded cluster or an existing one."""

    def __init__(self, address: str | None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        # Before Ray is imported: it reads its authentication settings early.
        self.token = use_token_if_present(self.address)
        import ray

        self.ray = ray
        self.started_here = False

    def __enter__(self) -> Session:
        ray = self.ray
        if ray.is_initialized():
            return self
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if self.address is None:
                # "local": always a new cluster of our own. ray.init() with no address would
                # join the cluster last recorded by `ray start` on this machine, even a dead
                # one (it then hangs for minutes), or silently run on someone else's.
                with _without_token_auth_notice():
                    ray.init(address="local", include_dashboard=False, **quiet)
            else:
                _init_with_retries(ray, self.address, quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            hint = "" if self.token else (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)"
            )
            raise SchedulerError(ADDRESS, f": cannot connect to Ray at {where}: {one_line(exc)}{hint}") from None
        self.started_here = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            self.ray.shutdown()

    def nodes(self) -> list[cluster.Node]:
        return cluster.alive_nodes(self.ray)


def use_token_if_present(address: str | None) -> bool:
    """Ray turns token authentication on by itself only for an embedded cluster or
    `auto`; for an explicit address a driver must ask for it. When the user has a
    token (the way Ray looks for one) and has not chosen a mode, use it: a token
    driver also connects to a cluster without authentication. True if in token mode."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode:
        return mode == "token"
    if address is None:
        return False
    has_token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
    )
    if has_token:
        os.environ["RAY_AUTH_MODE"] = "token"
    return bool(has_token)
