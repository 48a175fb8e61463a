"""The tenants file: what it gives, what it refuses (naming file, tenant, field); `ember keys`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ember.cli import main
from ember.engine.scheduling import Scheduling
from ember.serve.api_keys import key_hash, short_id
from ember.serve.tenants import TenantsConfig
from ember.serve.tenants_file import TenantsFileError, load_tenants_file, parse_tenants

ACME = key_hash("key-acme")
OTHER = key_hash("key-other")
GOOD = f"""
[classes.batch]
max_queued = 8

[classes.bulk]
priority = 5
sheddable = true
stream_interval = 0.25
background = true

[tenants.acme]
keys = ["{ACME}"]
class = "interactive"
weight = 2.5
requests_per_minute = 60
tokens_per_minute = 10000
max_concurrent = 4
models = ["m1"]

[tenants.nightly]
keys = [{{ hash = "{OTHER}", expires = 2020-01-01 }}]
class = "bulk"
expires = 2099-01-01T00:00:00Z
"""


def test_a_good_file() -> None:
    config = parse_tenants(GOOD, "t.toml")
    acme = config.tenants["acme"]
    assert acme.service_class.name == "interactive" and acme.weight == 2.5
    assert acme.limits.tokens_per_minute == 10000 and acme.limits.max_concurrent == 4
    assert acme.allows_model("m1") and not acme.allows_model("m2")
    assert config.classes["batch"].max_queued == 8 and config.classes["batch"].sheddable
    assert config.classes["bulk"].priority == 5
    # A class's streams are paced at its own interval; the batch class's default is longer
    # than the server's, interactive ones keep the server's (None).
    assert config.classes["bulk"].stream_interval == 0.25
    assert config.classes["batch"].stream_interval == 0.1
    assert config.classes["interactive"].stream_interval is None
    # The server's work for the batch class yields to the others' (BackgroundLane).
    assert config.classes["batch"].background and config.classes["bulk"].background
    assert not config.classes["interactive"].background
    assert not config.classes["standard"].background
    match = config.match("key-acme")
    assert match is not None and match.tenant is acme
    assert not match.expired(datetime.now(UTC))
    assert config.match("key-ACME") is None and config.match("") is None
    nightly = config.match("key-other")
    assert nightly is not None and nightly.expired(datetime.now(UTC))  # the key's own expiry
    assert not config.open and config.num_keys == 2


def test_the_body_priority_may_only_lower_urgency() -> None:
    acme = parse_tenants(GOOD, "t.toml").tenants["acme"]
    assert acme.scheduling(None) == Scheduling(priority=0, tenant="acme", weight=2.5)
    assert acme.scheduling(-10).priority == 0
    assert acme.scheduling(7).priority == 7


def test_open_and_single_key() -> None:
    assert TenantsConfig.open_server().open
    single = TenantsConfig.single_key("secret")
    assert not single.open and single.match("secret") is not None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[tenants.a\nkeys = []", ("t.toml", "not valid TOML", "line 1")),
        ('[tenants.a]\nclass = "gold"', ("t.toml", "tenant 'a'", "'class'", "'gold'")),
        (
            f'[tenants.a]\nkeys = ["{ACME}"]\n[tenants.b]\nkeys = ["{ACME}"]',
            ("tenant 'b'", "'keys'", short_id(ACME), "tenant 'a'"),
        ),
        (f'[tenants.a]\nkeys = ["{ACME}", "{ACME}"]', ("tenant 'a'", "'keys'")),
        ("[tenants.a]\ntokens_per_minute = -5", ("tenant 'a'", "'tokens_per_minute'", "-5")),
        ("[tenants.a]\nmax_concurrent = 0", ("tenant 'a'", "'max_concurrent'", ">= 1")),
        ("[tenants.a]\ntokenz_per_minute = 5", ("tenant 'a'", "unknown field 'tokenz_per_minute'")),
        ("[tenants.a]\nweight = 0", ("tenant 'a'", "'weight'")),
        ('[tenants.a]\nkeys = ["sk-ember-plain-key"]', ("tenant 'a'", "'keys'", "not a key hash")),
        ('[tenants.a]\nexpires = "soon"', ("tenant 'a'", "'expires'")),
        ("[tenants.a]\nexpires = 2027-01-01T00:00:00", ("tenant 'a'", "'expires'", "time zone")),
        ('[tenants."a b"]', ("tenant 'a b'",)),
        ("[classes.fast]\nmax_queued = 3", ("class 'fast'", "'priority'", "required")),
        ("[classes.batch]\nsheddable = 1", ("class 'batch'", "'sheddable'")),
        ("[classes.batch]\nbackground = 'yes'", ("class 'batch'", "'background'")),
        ("[classes.batch]\nspeed = 1", ("class 'batch'", "unknown field 'speed'")),
        ("[classes.batch]\nstream_interval = -1", ("class 'batch'", "'stream_interval'")),
        ('[classes.batch]\nstream_interval = "1s"', ("class 'batch'", "'stream_interval'")),
        ("tenant = 1", ("the top level", "unknown field 'tenant'")),
    ],
)
def test_bad_files_are_refused_naming_the_place(text: str, names: tuple[str, ...]) -> None:
    with pytest.raises(TenantsFileError) as refused:
        parse_tenants(text, "t.toml")
    message = str(refused.value)
    assert message.startswith("t.toml: ")
    for name in names:
        assert name in message, message


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match=r"missing\.toml: cannot read"):
        load_tenants_file(tmp_path / "missing.toml")


def test_keys_create_prints_a_key_once_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith("sk-ember-"))
    stored = key_hash(key)
    assert f'keys = ["{stored}"]' in out and f"key id {short_id(stored)}" in out
    assert len(key) > 40
    config = parse_tenants(out[out.index("[tenants.acme]") :], "pasted")
    assert config.match(key) is not None
    assert main(["keys", "create", "--tenant", "bad name"]) == 2
