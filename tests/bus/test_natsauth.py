"""NATS credentials and permissions per role, against a real nats-server configured with them."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner
from nats.errors import Error as NatsError

from backend.bus import natsauth, presence, subjects
from backend.bus.natsauth import Credentials
from backend.devstack.natsserver import NatsServer, check_config
from haproxy.tls import make_local_pki
from tests.natsauth_support import Seeds, connect_as, refusals, secured_server

pytestmark = pytest.mark.integration  # every test here runs real servers


@pytest.fixture
def credentials(tmp_path: Path) -> dict[str, Credentials]:
    return natsauth.write_credentials(tmp_path / "credentials", natsauth.LOCAL_ROLES)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, Seeds]]:
    with secured_server(tmp_path / "secured", natsauth.LOCAL_ROLES) as found:
        yield found


def test_seed_files_are_private_and_hold_the_public_keys_secret_half(
    credentials: dict[str, Credentials],
) -> None:
    assert set(credentials) == set(natsauth.LOCAL_ROLES)
    for found in credentials.values():
        assert stat.S_IMODE(found.seed_file.stat().st_mode) == 0o600
        seed = found.seed_file.read_bytes().strip()
        assert seed.startswith(b"SU")  # a user's seed
        assert natsauth.public_key(seed) == found.public_key
        assert found.public_key.startswith("U")
    assert len({found.public_key for found in credentials.values()}) == len(credentials)


def test_new_credentials_replace_an_earlier_runs(
    tmp_path: Path, credentials: dict[str, Credentials]
) -> None:
    again = natsauth.write_credentials(tmp_path / "credentials", [natsauth.SHARD])
    assert again[natsauth.SHARD].public_key != credentials[natsauth.SHARD].public_key
    assert stat.S_IMODE(again[natsauth.SHARD].seed_file.stat().st_mode) == 0o600


async def test_a_client_without_credentials_is_refused(
    secured: tuple[NatsServer, Seeds],
) -> None:
    server, _seeds = secured
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)


async def test_a_seed_the_server_does_not_know_is_refused(
    tmp_path: Path, secured: tuple[NatsServer, Seeds], credentials: dict[str, Credentials]
) -> None:
    server, _seeds = secured
    stranger = credentials[natsauth.ADMIN].seed_file  # made for another server
    with pytest.raises(NatsError, match="Authorization Violation"):
        await connect_as(server.url, natsauth.ADMIN, stranger, [])


# What no component of the role does, and so its credentials must not allow: (publish or
# subscribe, subject).
REFUSED = {
    natsauth.SHARD: [
        ("publish", subjects.shard_subject("shard-b")),  # operator requests: the API's alone
        ("subscribe", f"{natsauth.inbox_prefix(natsauth.API)}.>"),  # the API's answers
        ("publish", f"$JS.API.STREAM.DELETE.{subjects.ALERTS_STREAM}"),
        ("publish", f"$KV.{subjects.DEVICES_BUCKET}.gw-1"),
    ],
    natsauth.STATE: [
        ("publish", subjects.shard_subject("shard-a")),
        ("publish", subjects.kick_subject("shard-a")),
        ("publish", subjects.alert_subject("gw-1")),
        ("subscribe", "fleet.relay.>"),  # shell output
    ],
    natsauth.API: [
        ("publish", subjects.kick_subject("shard-a")),
        ("publish", subjects.alert_subject("gw-1")),
        ("publish", f"$KV.{subjects.PRESENCE_BUCKET}.gw-1"),
        ("subscribe", subjects.shard_subject("shard-a")),
    ],
    natsauth.AUDIT: [
        ("publish", subjects.alert_subject("gw-1")),
        ("publish", f"$JS.API.STREAM.PURGE.{subjects.ALERTS_STREAM}"),
        ("publish", f"$JS.API.STREAM.INFO.{subjects.STATUS_STREAM}"),
        ("publish", subjects.shard_subject("shard-a")),
        ("subscribe", subjects.alert_subject(">")),
    ],
}


@pytest.mark.parametrize("role", sorted(REFUSED))
async def test_each_role_is_refused_what_its_component_never_does(
    secured: tuple[NatsServer, Seeds], role: str
) -> None:
    server, seeds = secured
    actions = REFUSED[role]
    found = await refusals(server.url, role, seeds[role], actions)
    assert found == [subject.lower() for _kind, subject in actions]


async def test_the_api_may_ask_a_shard_and_a_shard_may_answer_and_kick(
    secured: tuple[NatsServer, Seeds],
) -> None:
    server, seeds = secured
    errors: list[Exception] = []
    shard = await connect_as(server.url, natsauth.SHARD, seeds[natsauth.SHARD], errors)
    api = await connect_as(server.url, natsauth.API, seeds[natsauth.API], errors)
    try:
        requests = await shard.subscribe(subjects.shard_subject("shard-a"))
        kicks = await shard.subscribe(subjects.kick_subject("shard-a"))
        await shard.flush()
        reply = asyncio.ensure_future(
            api.request(subjects.shard_subject("shard-a"), b"x", timeout=5)
        )
        asked = await requests.next_msg(timeout=5)
        assert asked.reply.startswith(natsauth.inbox_prefix(natsauth.API) + ".")
        await asked.respond(b"done")
        assert (await reply).data == b"done"
        await shard.publish(subjects.kick_subject("shard-a"), b"kick")  # from another shard
        assert (await kicks.next_msg(timeout=5)).data == b"kick"
    finally:
        await shard.close()
        await api.close()
    assert errors == []


async def test_a_shard_beats_and_the_api_and_the_state_read_the_live_shards(
    secured: tuple[NatsServer, Seeds],
) -> None:
    server, seeds = secured
    errors: list[Exception] = []
    clients = {role: await connect_as(server.url, role, seeds[role], errors)
               for role in natsauth.DEPLOYED_ROLES}  # fmt: skip
    try:
        buckets = {
            role: await subjects.ensure_shards_bucket(nc.jetstream(), presence.SHARD_TTL)
            for role, nc in clients.items()
        }
        await presence.heartbeat(buckets[natsauth.SHARD], "shard-a", "run-1")
        for role in (natsauth.API, natsauth.STATE):
            assert await presence.live_shards(buckets[role]) == {"shard-a": "run-1"}
        await buckets[natsauth.SHARD].delete("shard-a")  # a drained shard's goodbye
    finally:
        for nc in clients.values():
            await nc.close()
    assert errors == []


async def test_the_rendered_block_with_variables_passes_nats_servers_check(
    tmp_path: Path, credentials: dict[str, Credentials]
) -> None:
    variables = {role: f"${natsauth.env_variable(role)}" for role in natsauth.DEPLOYED_ROLES}
    config = tmp_path / "auth.conf"
    config.write_text(natsauth.render_authorization(variables))
    keys = {natsauth.env_variable(r): credentials[r].public_key for r in natsauth.DEPLOYED_ROLES}
    check_config(config, keys)


async def test_connect_options_verify_the_servers_tls_with_the_ca_file(
    tmp_path: Path, credentials: dict[str, Credentials]
) -> None:
    pki = make_local_pki(tmp_path / "pki", ("localhost",), ("127.0.0.1",))
    other = make_local_pki(tmp_path / "other-pki", ("localhost",), ("127.0.0.1",))
    users = natsauth.render_authorization({natsauth.STATE: credentials[natsauth.STATE].public_key})
    tls = f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n}}\n'
    with NatsServer(tmp_path / "nats", config=users + tls) as server:
        url = server.url.replace("nats://", "tls://")
        seed = credentials[natsauth.STATE].seed_file
        nc = await connect_as(url, natsauth.STATE, seed, [], ca_file=pki.ca_cert)
        assert nc.is_connected
        await nc.close()
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await connect_as(url, natsauth.STATE, seed, [], ca_file=other.ca_cert)


def test_the_command_writes_credentials_for_the_deployed_roles(tmp_path: Path) -> None:
    result = CliRunner().invoke(natsauth.main, [str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for role in natsauth.DEPLOYED_ROLES:
        public_key = (tmp_path / "out" / f"{role}.pub").read_text().strip()
        seed = (tmp_path / "out" / f"{role}{natsauth.SEED_SUFFIX}").read_bytes().strip()
        assert natsauth.public_key(seed) == public_key
        assert public_key in result.output
    assert not (tmp_path / "out" / f"{natsauth.ADMIN}.pub").exists()
    variables = dict(line.split("=") for line in (tmp_path / "out" / "nats-nkeys.env").open())
    assert {k: v.strip() for k, v in variables.items()} == {
        natsauth.env_variable(role): (tmp_path / "out" / f"{role}.pub").read_text().strip()
        for role in natsauth.DEPLOYED_ROLES
    }
