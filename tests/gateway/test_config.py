"""gateway.toml: valid files load, every mistake names its key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import ConfigError
from gateway.config import (
    SESSION_NEVER_EXPIRES,
    GatewayConfig,
    MqttConfig,
    MqttProtocol,
    MqttRule,
    PayloadFormat,
    load_config,
    parse_config,
)

FULL = """
sc = "10.0.0.5:9003"
dead_letter_topic = "dlq"
create_topics = true

[status]
listen = "unix:/run/headwater/gateway.sock"
log_interval_s = 30

[producer]
linger_ms = 2
send_timeout_s = 5

[[serial]]
path = "/dev/ttyUSB0"
baud = 921600
default_topic = "readings"
topics = { temperature = "temperature", humidity = "humidity" }

[[serial]]
path = "/dev/ttyACM0"
default_topic = "readings"

[mqtt]
host = "broker.local"
client_id = "gw-1"
protocol = "3.1.1"
keepalive_s = 20
in_flight = 200

[[mqtt.rules]]
filter = "headwater/+/temperature"
topic = "temperature"

[[mqtt.rules]]
filter = "legacy/#"
topic = "legacy"
format = "json"
key = 1
"""

MINIMAL = """
sc = "127.0.0.1:9003"
[mqtt]
[[mqtt.rules]]
filter = "headwater/+/+"
topic = "readings"
"""


def parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text))


def error_key(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.key


def test_full_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.sc == "10.0.0.5:9003"
    assert cfg.dead_letter_topic == "dlq"
    assert cfg.create_topics is True
    assert cfg.status.unix_path == Path("/run/headwater/gateway.sock")
    assert cfg.status.log_interval_s == 30
    assert cfg.producer.linger_ms == 2
    assert [p.path for p in cfg.serial] == ["/dev/ttyUSB0", "/dev/ttyACM0"]
    assert cfg.serial[0].baud == 921600
    assert dict(cfg.serial[0].topics) == {"temperature": "temperature", "humidity": "humidity"}
    assert cfg.serial[1].baud == 115200
    mqtt = cfg.mqtt
    assert mqtt is not None
    assert mqtt.protocol is MqttProtocol.V311
    assert mqtt.effective_port == 1883
    assert mqtt.in_flight == 200
    assert mqtt.rules[0].format is PayloadFormat.CBOR
    assert mqtt.rules[0].key_level == 1
    assert mqtt.rules[1].format is PayloadFormat.JSON
    assert mqtt.rules[1].key_level == 1
    assert cfg.topics() == ("temperature", "humidity", "readings", "legacy", "dlq")


def test_minimal_file_has_safe_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.mqtt is not None
    assert cfg.mqtt.protocol is MqttProtocol.V5
    assert cfg.mqtt.session_expiry_s == SESSION_NEVER_EXPIRES
    assert cfg.mqtt.client_id.startswith("headwater-gateway-")
    assert cfg.status.listen == "127.0.0.1:9099"
    assert cfg.dead_letter_topic == "dead-letters"
    assert cfg.mqtt.rules[0].key_level == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('sc = "nope"\n' + MINIMAL.split("\n", 2)[2], "sc"),
        (MINIMAL + 'dead_letter_topic = "Bad Topic"\n', "mqtt.rules[0].dead_letter_topic"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nport = 70000"), "mqtt.port"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nprotocol = \"4\""), "mqtt.protocol"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nin_flight = 0"), "mqtt.in_flight"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nlinger_ms = -1"), "mqtt.linger_ms"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nkeepalive_s = true"), "mqtt.keepalive_s"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\nhots = \"x\""), "mqtt.hots"),
        (MINIMAL.replace("[mqtt]", "[mqtt]\npassword_file = \"/x\""), "mqtt.password_file"),
        (MINIMAL + 'format = "xml"\n', "mqtt.rules[0].format"),
        (MINIMAL + "key = 7\n", "mqtt.rules[0].key"),
        (MINIMAL + "key = -1\n", "mqtt.rules[0].key"),
        (MINIMAL.replace("headwater/+/+", "headwater/#/x"), "mqtt.rules[0].filter"),
        (MINIMAL.replace("headwater/+/+", "head+water"), "mqtt.rules[0].filter"),
        (MINIMAL.replace('topic = "readings"', 'topic = "UPPER"'), "mqtt.rules[0].topic"),
        (MINIMAL + '[[mqtt.rules]]\nfilter = "headwater/dev1/#"\ntopic = "x"\n',
         "mqtt.rules[1].filter"),
        (MINIMAL + '[status]\nlisten = "0.0.0.0:9099"\n', "status.listen"),
        (MINIMAL + "[producer]\nlinger_ms = 5000\n", "producer.linger_ms"),
        (MINIMAL + '[tls]\ncert = "/nonexistent.pem"\n', "tls.key"),
        (MINIMAL + '[[serial]]\npath = "/dev/ttyS0"\ndefault_topic = "r"\nbaud = 12345\n',
         "serial[0].baud"),
        (MINIMAL + '[[serial]]\npath = "/dev/ttyS0"\ndefault_topic = "r"\n'
         '[[serial]]\npath = "/dev/ttyS0"\ndefault_topic = "r"\n', "serial[1].path"),
        (MINIMAL + '[[serial]]\npath = "/dev/ttyS0"\n', "serial[0].default_topic"),
        (MINIMAL + '[[serial]]\npath = "/dev/ttyS0"\ndefault_topic = "r"\ntopics = { a = 1 }\n',
         "serial[0].topics.a"),
        ('sc = "127.0.0.1:9003"\n', ""),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    assert error_key(text) == key


def test_key_misplaced_under_a_table_is_reported_where_it_is() -> None:
    # TOML puts keys after [[mqtt.rules]] into the rule: the error says so.
    assert error_key(MINIMAL + 'dead_letter_topic = "dlq"\n') == "mqtt.rules[0].dead_letter_topic"


def test_error_message_is_readable() -> None:
    with pytest.raises(ConfigError, match=r"^mqtt\.rules\[0\]\.format: must be one of cbor"):
        parse(MINIMAL + 'format = "xml"\n')


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("sc = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_password_file_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\nignored\n")
    cfg = MqttConfig(
        username="gw", password_file=secret,
        rules=(MqttRule(filter="a/+", topic="a"),),
    )
    assert cfg.password() == "s3cret"


def test_tls_port_default_and_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse(MINIMAL.replace("[mqtt]", f'[mqtt]\ntls = {{ ca = "{ca}" }}'))
    assert cfg.mqtt is not None
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.effective_port == 8883
    assert cfg.mqtt.tls.ca == ca


def test_dataclasses_are_frozen_and_validate_directly() -> None:
    rule = MqttRule(filter="a/+/b", topic="t")
    with pytest.raises(AttributeError):
        rule.topic = "u"  # type: ignore[misc]
    with pytest.raises(ConfigError) as info:
        MqttRule(filter="a/+", topic="t", key=5)
    assert info.value.key == "key"


def test_the_token_is_read_from_token_file_where_the_config_enters(tmp_path: Path) -> None:
    path = tmp_path / "gw.token"
    path.write_text("hwt_abc\n")
    assert parse(f'token_file = "{path}"\n' + MINIMAL).token == "hwt_abc"
    assert parse(MINIMAL).token is None
    assert error_key(f'token_file = "{tmp_path / "missing"}"\n' + MINIMAL) == "token_file"
    path.write_text("two words\n")
    with pytest.raises(ConfigError, match=r"token_file: token file .* not a token"):
        parse(f'token_file = "{path}"\n' + MINIMAL)
