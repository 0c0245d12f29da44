"""One command on a site's login node over SSH (paramiko), the way a worker reaches the site: the site's key, its
pinned host key, its environment prefixed. ``haorch hpc`` uses it to probe the test site's sshd::

    out = login_run(site_named(load_sites(cfg.home), "local"), "sinfo -h -o %P")   # "batch*\\n"

Every failure to log in (refused key, unknown or changed host key, nothing listening) is a ServiceError in one
line naming the address and the key.
"""

from __future__ import annotations

import shlex

import paramiko

from node.errors import ServiceError
from node.hpc.siteinfo import SiteInfo


def connect(info: SiteInfo, timeout_s: float = 10.0) -> paramiko.SSHClient:
    """A client logged in to ``info``'s login node; only a host key pinned in ``info.known_hosts`` is accepted."""
    where = f"{info.user}@{info.host}:{info.port}"
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        if info.known_hosts:
            client.load_host_keys(info.known_hosts)
        client.connect(info.host, info.port, username=info.user, key_filename=info.key_file, look_for_keys=False,
                       allow_agent=False, timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s)
    except paramiko.AuthenticationException as exc:
        client.close()
        raise ServiceError(f"SSH login to {where} refused with key {info.key_file} ({exc})") from None
    except paramiko.BadHostKeyException:
        client.close()
        raise ServiceError(f"SSH login to {where}: its host key is not the one pinned in {info.known_hosts}") from None
    except (TimeoutError, paramiko.SSHException, OSError) as exc:
        client.close()
        raise ServiceError(f"SSH login to {where} failed: {exc or type(exc).__name__}") from None
    return client


def run(client: paramiko.SSHClient, info: SiteInfo, command: str, timeout_s: float = 30.0) -> tuple[int, str, str]:
    """Run ``command`` (a shell line) with ``info.env`` exported first; its exit code, stdout and stderr."""
    line = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(info.env.items())) + command
    try:
        _stdin, stdout, stderr = client.exec_command(line, timeout=timeout_s)
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    except (TimeoutError, paramiko.SSHException, OSError) as exc:
        raise ServiceError(f"SSH command on {info.host}:{info.port} failed: {exc or type(exc).__name__}") from None


def login_run(info: SiteInfo, command: str, timeout_s: float = 30.0) -> str:
    """Log in, run ``command``, log out; its stdout, or ServiceError with the first line of its stderr."""
    client = connect(info, timeout_s=min(timeout_s, 10.0))
    try:
        code, out, err = run(client, info, command, timeout_s)
    finally:
        client.close()
    if code != 0:
        first = (err.strip().splitlines() or [f"exit code {code}"])[0]
        raise ServiceError(f"`{command}` on {info.host}:{info.port} failed: {first}")
    return out
