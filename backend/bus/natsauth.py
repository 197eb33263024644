"""NATS credentials and permissions, one set per role of the backend.

Every component connects as its role, authenticated by an nkey: the server's configuration
holds only the public keys (the ``authorization`` block of ``render_authorization``), each
component its own seed file (``write_credentials``), handed to nats-py by
``connect_options``. Permissions are allow-lists by subject, so a role can do only what its
component does: above all, only the operator API may send requests (commands, shell input,
update offers) to ``fleet.shard.<id>``; shards kick each other on ``fleet.kick.<id>``.

Each role also gets its own reply inbox prefix (``_INBOX.<role>``): with everyone on
``_INBOX.>`` any role could read the answers meant for another (a command's output).
Answering a request is allowed by ``allow_responses`` (to the requester's inbox, once).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click
import nkeys  # type: ignore[import-untyped]  # ships neither type hints nor stubs

from backend.bus import subjects

SHARD = "shard"
API = "api"
"""The operator API, and the fleet state instance it runs in its process (``run_state_service``)."""
STATE = "state"
AUDIT = "audit"
"""The simulator's read-back of the alert stream after a run: read-only."""
ADMIN = "admin"
"""Everything: the local stack's own tests and a person with the ``nats`` CLI; never deployed."""
DEPLOYED_ROLES = (SHARD, API, STATE)
LOCAL_ROLES = (*DEPLOYED_ROLES, AUDIT, ADMIN)
SEED_SUFFIX = ".nk"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May answer requests it received (one reply each, to the requester's inbox)."""

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            _unique(self.publish + other.publish),
            _unique(self.subscribe + other.subscribe),
            self.allow_responses or other.allow_responses,
        )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def inbox_prefix(role: str) -> str:
    return f"_INBOX.{role}"


def declares(*streams: str) -> tuple[str, ...]:
    """Creating or updating ``streams`` (every component declares the layout it uses,
    ``subjects.ensure_streams``), not deleting or purging them."""
    verbs = ("CREATE", "UPDATE", "INFO")
    return ("$JS.API.INFO", *(f"$JS.API.STREAM.{v}.{s}" for s in streams for v in verbs))


def reads_kv(bucket: str) -> tuple[str, ...]:
    """A bucket's entries by key: direct gets, or the stream's message get."""
    stream = subjects.bucket_stream(bucket)
    return (f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}")


def writes_kv(bucket: str) -> tuple[str, ...]:
    return (f"$KV.{bucket}.>",)


def consumes(stream: str) -> tuple[str, ...]:
    """Consumers of ``stream`` (create, info, delete, fetch), their acks and flow control."""
    api = "$JS.API.CONSUMER"
    return (
        f"{api}.*.{stream}",
        f"{api}.*.{stream}.>",
        f"{api}.DURABLE.CREATE.{stream}.>",
        f"{api}.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


LAYOUT = (
    subjects.ALERTS_STREAM,
    subjects.STATUS_STREAM,
    subjects.UPDATES_STREAM,
    subjects.PRESENCE_STREAM,
    subjects.SHARDS_STREAM,
)
DEVICES_STREAM = subjects.bucket_stream(subjects.DEVICES_BUCKET)

_SHARD = Permissions(
    publish=(
        subjects.alert_subject(">"),
        subjects.status_subject(">"),
        subjects.update_subject(">"),
        "fleet.relay.>",  # a device's messages for an operator session
        subjects.kick_subject("*"),
        *declares(*LAYOUT),
        *reads_kv(subjects.PRESENCE_BUCKET),
        *writes_kv(subjects.PRESENCE_BUCKET),
        *writes_kv(subjects.SHARDS_BUCKET),  # its heartbeat
    ),
    subscribe=(subjects.shard_subject("*"), subjects.kick_subject("*"), f"{inbox_prefix(SHARD)}.>"),
    allow_responses=True,  # answers to the operator API's requests
)
_STATE = Permissions(
    publish=(
        *declares(*LAYOUT, DEVICES_STREAM),
        *consumes(subjects.ALERTS_STREAM),
        *consumes(subjects.STATUS_STREAM),
        *consumes(subjects.PRESENCE_STREAM),
        *consumes(DEVICES_STREAM),  # the summary watches the bucket
        *consumes(subjects.SHARDS_STREAM),  # which shards are alive
        *reads_kv(subjects.DEVICES_BUCKET),
        *writes_kv(subjects.DEVICES_BUCKET),
    ),
    subscribe=(f"{inbox_prefix(STATE)}.>",),
)
_API = Permissions(
    publish=(
        subjects.shard_subject("*"),
        *declares(*LAYOUT, DEVICES_STREAM, subjects.ROLLOUTS_STREAM),
        *consumes(subjects.UPDATES_STREAM),  # rollout progress
        *consumes(DEVICES_STREAM),  # listing devices
        *consumes(subjects.SHARDS_STREAM),  # which shards are alive
        *reads_kv(subjects.PRESENCE_BUCKET),  # which shard holds a device
        *reads_kv(subjects.DEVICES_BUCKET),
        *reads_kv(subjects.ROLLOUTS_BUCKET),
        *writes_kv(subjects.ROLLOUTS_BUCKET),
    ),
    subscribe=("fleet.relay.>", f"{inbox_prefix(API)}.>"),
)
PERMISSIONS: dict[str, Permissions] = {
    SHARD: _SHARD,
    STATE: _STATE,
    API: _API | _STATE,
    AUDIT: Permissions(
        publish=(
            "$JS.API.STREAM.NAMES",  # which stream holds the alert subjects
            f"$JS.API.STREAM.INFO.{subjects.ALERTS_STREAM}",
            f"$JS.API.CONSUMER.CREATE.{subjects.ALERTS_STREAM}",
            f"$JS.API.CONSUMER.CREATE.{subjects.ALERTS_STREAM}.>",
            f"$JS.FC.{subjects.ALERTS_STREAM}.>",
        ),
        subscribe=(f"{inbox_prefix(AUDIT)}.>",),
    ),
    ADMIN: Permissions(publish=(">",), subscribe=(">",)),
}


# --- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    role: str
    public_key: str
    """What the server's configuration holds (``U...``)."""
    seed_file: Path
    """The secret, readable by its owner only: what the component is given."""


def public_key(seed: bytes) -> str:
    pair = nkeys.from_seed(bytearray(seed))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def write_credentials(directory: Path, roles: Iterable[str]) -> dict[str, Credentials]:
    """A new user nkey per role: ``<directory>/<role>.nk`` holds its seed (mode 0600, never
    readable by others, not even while written) and ``<role>.pub`` its public key."""
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for role in roles:
        seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        seed_file = directory / f"{role}{SEED_SUFFIX}"
        seed_file.unlink(missing_ok=True)  # an earlier run's: O_EXCL then creates it 0600
        fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
        made[role] = Credentials(role, public_key(seed), seed_file)
        (directory / f"{role}.pub").write_text(made[role].public_key + "\n")
    return made


# --- the server's side -----------------------------------------------------------------------


def _value(text: str) -> str:
    """A ``$VARIABLE`` reference stays as it is (nats-server reads it from the environment);
    anything else is a JSON string, which NATS' configuration format takes."""
    return text if text.startswith("$") else json.dumps(text)


def _subjects(allowed: tuple[str, ...]) -> str:
    """One a line: the deployed file is read, and diffed, by people."""
    return "[\n" + "".join(f"          {json.dumps(s)}\n" for s in allowed) + "        ]"


def render_user(role: str, nkey: str) -> str:
    permissions = PERMISSIONS[role]
    responses = "\n        allow_responses: true" if permissions.allow_responses else ""
    return (
        f"    # {role}\n"
        "    {\n"
        f"      nkey: {_value(nkey)}\n"
        "      permissions: {\n"
        f"        publish: {{allow: {_subjects(permissions.publish)}}}\n"
        f"        subscribe: {{allow: {_subjects(permissions.subscribe)}}}{responses}\n"
        "      }\n"
        "    }\n"
    )


def render_authorization(nkeys_by_role: Mapping[str, str]) -> str:
    """The ``authorization`` block for nats-server: one user per role, by its public nkey or
    a ``$VARIABLE`` holding it (a deployment's, from a Secret), with the role's permissions.
    A client without one of these keys is refused."""
    users = "".join(render_user(role, nkey) for role, nkey in nkeys_by_role.items())
    return (
        "# Generated by backend/bus/natsauth.py (PERMISSIONS): edit that, not this block.\n"
        f"authorization {{\n  users = [\n{users}  ]\n}}\n"
    )


def env_variable(role: str) -> str:
    """Where a deployed server finds the role's public key (nats.conf refers to it)."""
    return f"NATS_NKEY_{role.upper()}"


def deployed_authorization() -> str:
    """deploy/k8s/nats-auth.conf: the deployed roles, their keys from the pod's variables."""
    return render_authorization({role: f"${env_variable(role)}" for role in DEPLOYED_ROLES})


# --- the client's side -----------------------------------------------------------------------


class NatsSettings(Protocol):
    """What a component's configuration says about its NATS connection's security."""

    @property
    def nats_credentials(self) -> Path | None: ...

    @property
    def nats_ca_file(self) -> Path | None: ...


@dataclass(frozen=True)
class Settings:
    """``NatsSettings`` of a client with no configuration object of its own (the audit)."""

    nats_credentials: Path | None = None
    nats_ca_file: Path | None = None


def connect_options(role: str, settings: NatsSettings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for a component of ``role``: its seed file and its
    inbox prefix (none without credentials: an unauthenticated server, as in unit tests), and
    with a CA file TLS trusting that CA (for ``tls://`` URLs or a server requiring TLS)."""
    options: dict[str, Any] = {}
    if settings.nats_credentials is not None:
        options["nkeys_seed"] = str(settings.nats_credentials)
        options["inbox_prefix"] = inbox_prefix(role)
    if settings.nats_ca_file is not None:
        options["tls"] = ssl.create_default_context(cafile=str(settings.nats_ca_file))
    return options


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def main(directory: Path) -> None:
    """New nkeys for the deployed roles: DIRECTORY/<role>.nk (a seed, for the component's
    Secret) and <role>.pub (the public key, for the NATS nodes'); docs/deploy.md."""
    made = write_credentials(directory, DEPLOYED_ROLES)
    for credentials in made.values():
        click.echo(f"{credentials.role:<6} {credentials.public_key}  {credentials.seed_file}")
    # The NATS nodes' variables (Compose: their env_file).
    keys = "".join(f"{env_variable(role)}={c.public_key}\n" for role, c in made.items())
    (directory / "nats-nkeys.env").write_text(keys)


if __name__ == "__main__":
    main()
