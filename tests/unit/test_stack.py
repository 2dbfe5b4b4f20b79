"""The stack config schema: defaults, every rule naming its key, secrets, and Pulumi.yaml in sync."""

from __future__ import annotations

import base64
import ipaddress
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcow_ha.errors import ConfigError
from mailcow_ha.stack import KEYS, KEYS_BY_NAME, Placeholder, parse_stack
from mailcow_ha.stack_git import repository_identity, resolve_runtime_ref, unpublished_warning

REPOSITORY = Path(__file__).resolve().parents[2]
TOKEN = "hcloud-token-must-stay-secret"
VALID: dict[str, Any] = {
    "mailHostname": "mail.example.org",
    "runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
    "runtimeRef": "a" * 40,
    "hcloudToken": TOKEN,
}
SECRETS = {"hcloudToken", "alertUrls", "galeraPassword", "statusApiSecret"}


def ssh_field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def ssh_key(key_type: str, *fields: bytes, comment: str = "admin@example.org") -> str:
    """Build a public key line in OpenSSH's format from its type and the fields after the type name."""
    blob = ssh_field(key_type.encode()) + b"".join(ssh_field(item) for item in fields)
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}"


ED25519 = ssh_key("ssh-ed25519", bytes(range(32)))
RSA = ssh_key("ssh-rsa", b"\x01\x00\x01", b"\x00" + bytes(range(1, 200)))
ECDSA = ssh_key("ecdsa-sha2-nistp256", b"nistp256", b"\x04" + bytes(64))
SK_ECDSA = ssh_key("sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + bytes(64), b"ssh:")


def parse(**overrides: Any) -> Any:
    return parse_stack({**VALID, **overrides}, SECRETS, stack="prod")


def test_defaults_fill_unset_keys() -> None:
    stack = parse()

    assert stack.cluster_name == "mailcow-prod"
    assert stack.node_count == 3
    assert stack.location == "fsn1"
    assert stack.network_zone == "eu-central"
    assert stack.subnet_cidr == ipaddress.IPv4Network("10.0.1.0/24")
    assert stack.breaker_window == 3600
    assert stack.advert_interval == 1
    assert stack.floating_ipv6 is False
    assert stack.galera_password is None
    assert stack.node_name(2) == "mailcow-prod-2"
    assert stack.private_ip(9) == ipaddress.IPv4Address("10.0.1.19")


def test_pulumi_strings_are_converted() -> None:
    stack = parse(nodeCount="5", floatingIpv6="true", sshAllowedCidrs='["198.51.100.0/24", "2001:db8::/48"]')

    assert stack.node_count == 5
    assert stack.floating_ipv6 is True
    assert [str(cidr) for cidr in stack.ssh_allowed_cidrs] == ["198.51.100.0/24", "2001:db8::/48"]


def test_alert_urls_split_and_hidden() -> None:
    stack = parse(alertUrls="mailtos://a:secret-one@example.org, tgram://123456789:bot-secret/987654")

    assert len(stack.alert_urls) == 2
    assert "secret-one" not in repr(stack)
    assert TOKEN not in repr(stack)
    assert TOKEN not in str(stack.hcloud_token)


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("nodeCount", 4, "expected 3, 5, 7 or 9"),
        ("nodeCount", 1, "expected 3, 5, 7 or 9"),
        ("nodeCount", 11, "expected 3, 5, 7 or 9"),
        ("nodeCount", "three", "expected an integer"),
        ("location", "mars1", "expected a Hetzner location"),
        ("serverType", "big server", "server type"),
        ("image", "ubuntu-24.04", "Debian image"),
        ("networkCidr", "10.0.0.0/33", "IPv4 network"),
        ("networkCidr", "8.8.0.0/16", "private range"),
        ("networkCidr", "172.16.0.0/12", "Docker's default bridge"),
        ("networkCidr", "10.0.0.0/25", "/24 or larger"),
        ("nodeCount", "\uff15", "expected an integer"),
        ("subnetCidr", "10.1.0.0/24", "inside networkCidr"),
        ("subnetCidr", "10.0.1.0/28", "at least 21 addresses"),
        ("sshAllowedCidrs", ["198.51.100.0/33"], "expected a network"),
        ("sshAllowedCidrs", "not json", "expected a list"),
        ("adminSshKeys", ["not a key"], "OpenSSH public key"),
        ("adminSshKeys", [ED25519[:60]], "not a complete ssh-ed25519 key"),
        ("adminSshKeys", [ED25519.replace("ssh-ed25519", "ssh-rsa", 1)], "not a complete ssh-rsa key"),
        ("adminSshKeys", [ED25519.replace("AAAA", "AA!A", 1)], "not valid base64"),
        ("adminSshKeys", [f'from="10.0.0.1" {ED25519}'], "without authorized_keys options"),
        ("adminSshKeys", [ED25519 + "\nssh-rsa AAAA"], "one line"),
        ("adminSshKeys", [ED25519, ED25519.replace("admin@", "other@")], "key number 2 repeats key number 1"),
        ("sharedVolumeSize", 5, "10..10240 GB"),
        ("dbVolumeSize", 20000, "10..10240 GB"),
        ("mailHostname", "localhost", "fully qualified host name"),
        ("mailHostname", "mail_server.example.org", "fully qualified host name"),
        ("mailHostname", "", "missing"),
        ("mailHostname", "192.0.2.25", "fully qualified host name"),
        ("mailHostname", "mail.b\u00fccher.example", "xn-- form"),
        ("mailHostname", "mail..example.org", "fully qualified host name"),
        ("floatingIpv6", "maybe", "expected true or false"),
        ("breakerWindow", 10, "60..86400"),
        ("advertInterval", 0, "1..10"),
        ("advertInterval", 11, "1..10"),
        ("virtualRouterId", 256, "1..255"),
        ("privateInterface", "an-interface-name-too-long", "interface name"),
        ("publicInterface", "..", "interface name"),
        ("mailcowRef", "master", "a branch moves"),
        ("runtimeRef", "v1.0", "full commit id"),
        ("runtimeRepository", "ftp://example.org/x", "https://"),
        ("runtimeRepository", "https://deploy:glpat-token@git.example.org/x.git", "without a user name or password"),
        ("runtimeRepository", "ssh://git@git.example.org/x.git", "no SSH key"),
        ("runtimeRepository", "git@github.com:example/mailcow-ha.git", "no SSH key"),
        ("clusterName", "Mail_Cluster", "lower-case"),
        ("hcloudToken", "", "missing"),
        ("hcloudToken", "t\u00f6ken-with-umlaut", "ASCII letters and digits"),
        ("hcloudToken", "token\x00", "ASCII letters and digits"),
        ("galeraPassword", "sixteen-chars-\x07-bell", "printable characters"),
        ("alertUrls", "not-a-url", "URL number 1"),
        ("alertUrls", "mailtos://a:b@example.org nosuchservice://token@host", "URL number 2"),
        ("alertUrls", "https://example.org/webhook", "Apprise cannot send to this https:// URL"),
        ("alertUrls", "tgram://bot-token-without-chat", "Apprise cannot send to this tgram:// URL"),
        ("galeraPassword", "short", "at least 16 printable characters"),
        ("nodeCuont", 3, "unknown key"),
    ],
)
def test_invalid_value_names_key(key: str, value: Any, rule: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(**{key: value})

    message = str(raised.value)
    assert f"mailcow-ha:{key}:" in message
    assert rule in message


@pytest.mark.parametrize("key", [ED25519, RSA, ECDSA, SK_ECDSA])
def test_ssh_key_types_accepted(key: str) -> None:
    assert parse(adminSshKeys=[key]).admin_ssh_keys == (key,)


def test_alert_url_comma_kept_inside_url() -> None:
    """A comma that separates recipients stays in its URL; one before a new scheme separates URLs."""
    recipients = "mailtos://user:pass@smtp.example.net?to=ops@example.net,boss@example.net"

    stack = parse(alertUrls=f"{recipients},json://hooks.example.net/mailcow")

    assert [url.get_secret_value() for url in stack.alert_urls] == [recipients, "json://hooks.example.net/mailcow"]


def test_rejected_alert_url_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Apprise logs a URL it cannot parse in full; the check keeps that out of every log."""
    with pytest.raises(ConfigError) as raised:
        parse(alertUrls="tgram://bot-secret-token/")

    assert "bot-secret-token" not in str(raised.value)
    assert "bot-secret-token" not in caplog.text


@pytest.mark.parametrize("stack_name", ["Prod_EU", "staging.eu", "x" * 60])
def test_derived_cluster_name_checked(stack_name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_stack(VALID, SECRETS, stack=stack_name)

    assert "mailcow-ha:clusterName: unset, so the cluster name is derived" in str(raised.value)


def test_explicit_cluster_name_allows_any_stack() -> None:
    assert parse_stack({**VALID, "clusterName": "mail-eu"}, SECRETS, stack="Prod_EU").cluster_name == "mail-eu"


def test_hostname_normalised() -> None:
    assert parse(mailHostname="MAIL.Example.ORG.").mail_hostname == "mail.example.org"
    assert parse(mailHostname="mail.example.xn--p1ai").mail_hostname == "mail.example.xn--p1ai"


@pytest.mark.parametrize(("key", "value"), [("mailHostname", "mail.example.org"), ("nodeCount", "5")])
def test_plain_key_set_as_secret_rejected(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_stack({**VALID, key: value}, SECRETS | {key}, stack="prod")

    assert f"mailcow-ha:{key}: set as a secret, but it is not one" in str(raised.value)
    assert value not in str(raised.value)


def test_invalid_value_shown_unless_secret() -> None:
    with pytest.raises(ConfigError) as raised:
        parse(location="mars1", galeraPassword="tiny secret!")

    assert "'mars1'" in str(raised.value)
    assert "tiny secret!" not in str(raised.value)
    assert "<hidden>" in str(raised.value)


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        parse(nodeCount=2, location="x", dbVolumeSize=1)

    assert "3 problem(s)" in str(raised.value)


@pytest.mark.parametrize("key", ["hcloudToken", "alertUrls", "galeraPassword", "statusApiSecret"])
def test_plain_secret_rejected(key: str) -> None:
    values = {**VALID, key: "plain-value-of-sixteen-chars"}

    with pytest.raises(ConfigError) as raised:
        parse_stack(values, SECRETS - {key}, stack="prod")

    assert f"mailcow-ha:{key}: given as plain text" in str(raised.value)
    assert "plain-value-of-sixteen-chars" not in str(raised.value)


def test_placeholders_accepted_for_secrets() -> None:
    stack = parse(hcloudToken=Placeholder("hcloudToken"), alertUrls=Placeholder("alertUrls"))

    assert stack.hcloud_token == Placeholder("hcloudToken")
    assert str(stack.alert_urls[0]) == "<secret mailcow-ha:alertUrls>"


def test_pulumi_yaml_declares_every_key() -> None:
    document = yaml.safe_load((REPOSITORY / "Pulumi.yaml").read_text(encoding="utf-8"))
    declared = document["config"]

    assert document["name"] == "mailcow-ha"
    assert set(declared) == set(KEYS_BY_NAME)
    for spec in KEYS:
        entry = declared[spec.name]
        assert entry["type"] == spec.type, spec.name
        assert entry["type"] in {"string", "integer", "boolean", "array"}, spec.name
        assert entry["description"] == spec.description, spec.name
        assert set(entry) <= {"type", "description", "default", "secret", "items"}, spec.name
        if spec.required:
            assert "default" not in entry, spec.name
        elif not spec.secret:
            assert entry["default"] == spec.default, spec.name
        if spec.type == "array":
            assert entry["items"] == {"type": "string"}, spec.name


def test_prod_stack_file_is_valid() -> None:
    from mailcow_ha.cli.render import load_stack

    stack = load_stack(REPOSITORY, "prod")

    assert stack.node_count == 3
    assert stack.mail_hostname == "mail.example.org"
    assert isinstance(stack.hcloud_token, Placeholder)
    config = yaml.safe_load((REPOSITORY / "Pulumi.prod.yaml").read_text(encoding="utf-8"))["config"]
    for key in SECRETS:
        assert f"mailcow-ha:{key}" not in config


def test_runtime_ref_resolved_from_git(tmp_path: Path) -> None:
    def git(*arguments: str) -> str:
        completed = subprocess.run(["git", "-C", str(tmp_path), *arguments], capture_output=True, text=True, check=True)
        return completed.stdout.strip()

    git("init", "-q")
    (tmp_path / "file").write_text("one\n", encoding="utf-8")
    git("add", "file")
    git("-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", "one")
    stack = parse(runtimeRef="")

    resolved, warning = resolve_runtime_ref(stack, tmp_path, allow_dirty=False)
    assert resolved.runtime_ref == git("rev-parse", "HEAD")
    assert warning is None

    (tmp_path / "file").write_text("two\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="uncommitted changes"):
        resolve_runtime_ref(stack, tmp_path, allow_dirty=False)
    _, warning = resolve_runtime_ref(stack, tmp_path, allow_dirty=True)
    assert warning is not None


def make_checkout(path: Path, remote_url: str) -> str:
    """Create a git checkout whose remote `origin` is `remote_url`; return its HEAD commit."""

    def git(*arguments: str) -> str:
        completed = subprocess.run(["git", "-C", str(path), *arguments], capture_output=True, text=True, check=True)
        return completed.stdout.strip()

    git("init", "-q")
    git("remote", "add", "origin", remote_url)
    (path / "file").write_text("one\n", encoding="utf-8")
    git("add", "file")
    git("-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", "one")
    return git("rev-parse", "HEAD")


def test_pushed_commit_not_warned(tmp_path: Path) -> None:
    head = make_checkout(tmp_path, "git@git.example.org:ops/mailcow-ha.git")
    subprocess.run(["git", "-C", str(tmp_path), "update-ref", "refs/remotes/origin/main", head], check=True)

    assert unpublished_warning(parse(runtimeRef=head), tmp_path) is None


def test_unpushed_commit_warned(tmp_path: Path) -> None:
    head = make_checkout(tmp_path, "https://git.example.org/ops/mailcow-ha")

    warning = unpublished_warning(parse(runtimeRef=head), tmp_path)

    assert warning is not None
    assert f"commit {head} is on no branch of remote origin" in warning


def test_other_remote_warned(tmp_path: Path) -> None:
    head = make_checkout(tmp_path, "https://github.com/someone/fork.git")

    warning = unpublished_warning(parse(runtimeRef=head), tmp_path)

    assert warning is not None
    assert "no git remote of" in warning


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.org/ops/mailcow-ha.git",
        "https://Git.Example.org/ops/mailcow-ha/",
        "ssh://git@git.example.org:2222/ops/mailcow-ha.git",
        "git@git.example.org:ops/mailcow-ha.git",
    ],
)
def test_repository_url_forms_equal(url: str) -> None:
    assert repository_identity(url) == "git.example.org/ops/mailcow-ha"


def test_runtime_ref_outside_git_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set runtimeRef explicitly"):
        resolve_runtime_ref(parse(runtimeRef=""), tmp_path, allow_dirty=True)


def documented_config_commands() -> list[list[str]]:
    """Return the arguments of every `pulumi config set` the README and the example stack show."""
    lines = (REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines()
    lines += [line.lstrip("# ") for line in (REPOSITORY / "Pulumi.prod.yaml").read_text(encoding="utf-8").splitlines()]
    commands = []
    for line in lines:
        if line.startswith("pulumi config set "):
            command = line.split(" #", 1)[0].replace('"$(cat ~/.ssh/id_ed25519.pub)"', shlex.quote(ED25519))
            commands.append(shlex.split(command)[3:])
    return commands


def apply_config_commands(commands: list[list[str]]) -> tuple[dict[str, Any], set[str], set[str]]:
    """Apply `pulumi config set` arguments as Pulumi stores them; return values, secret keys, other namespaces."""
    values: dict[str, Any] = {}
    secrets: set[str] = set()
    namespaces: set[str] = set()
    for arguments in commands:
        secret = "--secret" in arguments
        path = "--path" in arguments
        positional = [argument for argument in arguments if not argument.startswith("--")]
        full_key = positional[0]
        value = positional[1] if len(positional) > 1 else "value-typed-at-the-prompt"
        namespace, _, key = full_key.partition(":")
        if namespace != "mailcow-ha":
            namespaces.add(namespace)
            continue
        if path:
            match = re.fullmatch(r"(\w+)\[(\d+)\]", key)
            assert match, full_key
            key = match.group(1)
            items = values.setdefault(key, [])
            assert int(match.group(2)) == len(items), full_key
            items.append(value)
        else:
            values[key] = value
        if secret:
            secrets.add(key)
    return values, secrets, namespaces


def test_documented_commands_make_valid_stack() -> None:
    """The README's `pulumi config set` commands, run as written, name real keys and give a valid stack."""
    commands = documented_config_commands()
    values, secrets, namespaces = apply_config_commands(commands)

    assert len(commands) >= 7
    assert set(values) <= set(KEYS_BY_NAME)
    assert namespaces == {"hcloud"}
    assert secrets == {"hcloudToken", "alertUrls"}
    stack = parse_stack(values, secrets, stack="prod")
    assert stack.admin_ssh_keys == (ED25519,)
    assert [str(cidr) for cidr in stack.ssh_allowed_cidrs] == ["198.51.100.0/24"]
    assert len(stack.alert_urls) == 1
