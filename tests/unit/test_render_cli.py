"""`mailcow-ha render`: review files for every node, placeholders for ids and secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mailcow_ha.cli import main
from mailcow_ha.errors import ExitCode

REPOSITORY = Path(__file__).resolve().parents[2]
COMMIT = "a" * 40


def write_stack(project: Path, config: dict[str, object]) -> None:
    (project / "cloud-init").symlink_to(REPOSITORY / "cloud-init")
    document = {"config": {"mailcow-ha:runtimeRef": COMMIT, **config}}
    (project / "Pulumi.test.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")


def base_config() -> dict[str, object]:
    return {
        "mailcow-ha:mailHostname": "mail.example.org",
        "mailcow-ha:runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
        "mailcow-ha:hcloudToken": {"secure": "v1:encrypted-token-bytes"},
        "mailcow-ha:alertUrls": {"secure": "v1:encrypted-url-bytes"},
        "hcloud:token": {"secure": "v1:provider-token-bytes"},
    }


def render(project: Path, out: Path, *extra: str) -> int:
    return main(["render", "--stack", "test", "--out", str(out), "--project-dir", str(project), *extra])


def test_writes_files_for_every_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())

    code = render(project, tmp_path / "out", "--node-count", "5")

    assert code == ExitCode.OK
    nodes = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert nodes == [f"mailcow-test-{index}" for index in range(1, 6)]
    node = tmp_path / "out/mailcow-test-5"
    for relative in (
        "user-data.yaml",
        "keepalived.conf",
        "99-mailcow-ha-galera.cnf",
        "files/etc/mailcow-ha/node.yaml",
        "files/etc/systemd/system/mailcow-ha-agent.service",
    ):
        assert (node / relative).is_file(), relative
    keepalived = (node / "keepalived.conf").read_text()
    assert "unicast_src_ip 10.0.1.15" in keepalived
    for index in range(1, 5):
        assert f"        10.0.1.1{index}\n" in keepalived
    assert "mailcow-test-5" in capsys.readouterr().out


def test_review_files_contain_placeholders_only(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())

    render(project, tmp_path / "out")

    node_config = yaml.safe_load((tmp_path / "out/mailcow-test-1/files/etc/mailcow-ha/node.yaml").read_text())
    assert node_config["hetzner"]["token"] == "<secret mailcow-ha:hcloudToken>"
    assert node_config["hetzner"]["shared_volume_id"] == "<id-of-volume-mailcow-test-shared-data>"
    assert node_config["alerts"]["urls"] == ["<secret mailcow-ha:alertUrls>"]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "encrypted-token-bytes" not in text, path
            assert "provider-token-bytes" not in text, path


def test_plain_secret_in_stack_file_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, {**base_config(), "mailcow-ha:hcloudToken": "plain-token-in-file"})

    code = render(project, tmp_path / "out")
    errors = capsys.readouterr().err

    assert code == ExitCode.CONFIG
    assert "mailcow-ha:hcloudToken: given as plain text" in errors
    assert "plain-token-in-file" not in errors
    assert not (tmp_path / "out").exists()


def test_missing_stack_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = render(tmp_path, tmp_path / "out")

    assert code == ExitCode.CONFIG
    assert f"{tmp_path}/Pulumi.test.yaml not found" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["1", "4", "11"])
def test_invalid_node_count_override(tmp_path: Path, capsys: pytest.CaptureFixture[str], count: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())

    with pytest.raises(SystemExit) as exit_info:
        render(project, tmp_path / "out", f"--node-count={count}")

    # argparse rejects it and names the option the user typed, with the stack's rule.
    assert exit_info.value.code == ExitCode.USAGE
    assert f"argument --node-count: {count} nodes: expected 3, 5, 7 or 9" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("config:\n  mailcow-ha:nodeCount: [5\n", "could not be read"),
        ("- just\n- a list\n", "has no `config:` mapping"),
        ("config: 5\n", "has no `config:` mapping"),
        ("config:\n  mailcow-ha:nodeCount: 3\n  mailcow-ha:nodeCount: 5\n", "could not be read"),
    ],
)
def test_broken_stack_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    (tmp_path / "Pulumi.test.yaml").write_text(text, encoding="utf-8")

    code = render(tmp_path, tmp_path / "out")

    assert code == ExitCode.CONFIG
    assert f"Pulumi.test.yaml {message}" in capsys.readouterr().err


def test_output_path_is_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())
    (tmp_path / "out").write_text("notes\n")

    code = render(project, tmp_path / "out")

    assert code == ExitCode.USAGE
    assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "notes\n"


def test_scale_in_render_removes_stale_nodes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())
    out = tmp_path / "out"
    render(project, out, "--node-count", "5")
    (out / "notes.txt").write_text("kept\n")

    code = render(project, out)

    assert code == ExitCode.OK
    assert sorted(path.name for path in out.iterdir()) == [f"mailcow-test-{index}" for index in (1, 2, 3)] + [
        "notes.txt"
    ]
    assert "10.0.1.14" not in (out / "mailcow-test-1/keepalived.conf").read_text()


def test_foreign_directory_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, base_config())
    foreign = tmp_path / "out/mailcow-test-2"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("data\n")

    code = render(project, tmp_path / "out")

    assert code == ExitCode.USAGE
    assert "was not written by `mailcow-ha render`" in capsys.readouterr().err
    assert (foreign / "mine.txt").read_text() == "data\n"
    assert not (tmp_path / "out/mailcow-test-1").exists()


def test_stack_file_scalars_read_as_strings(tmp_path: Path) -> None:
    """Pulumi hands every value to the program as a string; YAML would make dates and numbers of some."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "cloud-init").symlink_to(REPOSITORY / "cloud-init")
    text = (
        "config:\n"
        f"  mailcow-ha:runtimeRef: {COMMIT}\n"
        "  mailcow-ha:mailHostname: mail.example.org\n"
        "  mailcow-ha:runtimeRepository: https://git.example.org/ops/mailcow-ha.git\n"
        "  mailcow-ha:hcloudToken: {secure: v1:encrypted-token-bytes}\n"
        "  mailcow-ha:clusterName: 1234\n"
        "  mailcow-ha:mailcowRef: 2025-01-15\n"
        "  mailcow-ha:nodeCount: 5\n"
        "  mailcow-ha:floatingIpv6: true\n"
        "  mailcow-ha:galeraPassword:\n"
    )
    (project / "Pulumi.test.yaml").write_text(text, encoding="utf-8")

    code = render(project, tmp_path / "out")

    assert code == ExitCode.OK
    node_config = yaml.safe_load((tmp_path / "out/1234-5/files/etc/mailcow-ha/node.yaml").read_text())
    assert node_config["cluster"] == "1234"
    assert len(node_config["hetzner"]["floating_ips"]) == 2
    user_data = yaml.safe_load((tmp_path / "out/1234-1/user-data.yaml").read_text())
    command = user_data["runcmd"][0]
    assert command[command.index("--mailcow-ref") + 1] == "2025-01-15"


def test_key_without_namespace_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, {**base_config(), "nodeCount": 5})

    code = render(project, tmp_path / "out")

    assert code == ExitCode.CONFIG
    assert "key 'nodeCount' has no namespace; write it as mailcow-ha:nodeCount" in capsys.readouterr().err


def test_encrypted_plain_key_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_stack(project, {**base_config(), "mailcow-ha:mailHostname": {"secure": "v1:encrypted-hostname"}})

    code = render(project, tmp_path / "out")
    errors = capsys.readouterr().err

    assert code == ExitCode.CONFIG
    assert "mailcow-ha:mailHostname: set as a secret, but it is not one" in errors
    assert "encrypted-hostname" not in errors
