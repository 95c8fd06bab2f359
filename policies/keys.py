"""CURVE keys for serving a policy beyond localhost: generate, load, and apply to sockets.

`tether keys generate DIR` writes:

    DIR/server.key, DIR/server.key_secret        the server's key pair (keep the secret on the server)
    DIR/client.key, DIR/client.key_secret        a client key pair (copy the secret to the robot)
    DIR/authorized_clients/client.key            public keys the server accepts

The robot side needs `server.key` and `client.key_secret`; the server needs `server.key_secret`
and `authorized_clients/`. A client whose public key is not authorized is refused during the
handshake (it sees no reply and times out); traffic is encrypted either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth

from tether.core.errors import ConfigError

SERVER = "server"
AUTHORIZED = "authorized_clients"


class ClientKeys(NamedTuple):
    server_public: bytes
    public: bytes
    secret: bytes


def generate_keys(directory: Path, client_name: str = "client", overwrite: bool = False) -> dict:
    """Create the server pair (if missing) and one client pair; returns the file paths."""
    directory = Path(directory)
    if not zmq.has("curve"):
        raise ConfigError(
            "this pyzmq/libzmq build has no CURVE support; install pyzmq wheels from PyPI"
        )
    if not client_name.isidentifier() or client_name == SERVER:
        raise ConfigError(
            f"client name '{client_name}' must be a simple identifier other than 'server'"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / AUTHORIZED).mkdir(exist_ok=True)
    client_secret = directory / f"{client_name}.key_secret"
    if client_secret.exists() and not overwrite:
        raise ConfigError(
            f"{client_secret} exists; pass --overwrite or choose another --client name"
        )
    server_secret = directory / f"{SERVER}.key_secret"
    if not server_secret.exists() or overwrite:
        zmq.auth.create_certificates(directory, SERVER)
    public, secret = zmq.auth.create_certificates(directory, client_name)
    shutil.copy(public, directory / AUTHORIZED / Path(public).name)
    for path in directory.glob("*.key_secret"):
        path.chmod(0o600)
    return {
        "server_public": directory / f"{SERVER}.key",
        "server_secret": server_secret,
        "client_public": Path(public),
        "client_secret": Path(secret),
        "authorized": directory / AUTHORIZED,
    }


def configure_server(context: zmq.Context, socket: zmq.Socket, directory: Path):
    """Make `socket` a CURVE server that accepts only authorized clients; returns the authenticator.

    Call before bind(). The caller stops the returned authenticator when the server stops.
    """
    from zmq.auth.thread import ThreadAuthenticator

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"key directory {directory} does not exist; create it with `tether keys generate "
            f"{directory}`"
        )
    public, secret = _load(directory / f"{SERVER}.key_secret", "server secret key")
    authorized = directory / AUTHORIZED
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ConfigError(
            f"{authorized} holds no client public keys; run `tether keys generate {directory}`"
        )
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def load_client_keys(directory: Path, client_name: str = "client") -> ClientKeys:
    """The server's public key and a client key pair from `directory` (ConfigError if absent).

    Called when the client is created, so a wrong `--keys` fails at once with the fix instead
    of surfacing as a handshake that never completes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"key directory {directory} does not exist; create keys with `tether keys generate "
            f"{directory}` on the server and copy server.key and {client_name}.key_secret here"
        )
    server_public, _ = _load(directory / f"{SERVER}.key", "server public key")
    public, secret = _load(directory / f"{client_name}.key_secret", "client secret key")
    if secret is None:
        raise ConfigError(f"{directory / (client_name + '.key_secret')} holds no secret key")
    return ClientKeys(server_public, public, secret)


def configure_client(
    socket: zmq.Socket, keys: ClientKeys | Path, client_name: str = "client"
) -> None:
    """Give `socket` a client key pair and the server's public key (call before connect())."""
    if not isinstance(keys, ClientKeys):
        keys = load_client_keys(Path(keys), client_name)
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(
            f"{what} not found at {path}; create keys with `tether keys generate {path.parent}`"
        )
    try:
        return zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what} at {path} is not a valid ZMQ certificate: {exc}") from None
