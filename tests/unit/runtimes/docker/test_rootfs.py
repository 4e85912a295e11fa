"""Root filesystems for the fence images: ldd parsing, copying host paths, build contexts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from netfence.errors import NetfenceError
from netfence.runtimes.docker import rootfs

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5d9f1000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0d2c000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d2be1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0d2c10f000)
"""


def test_parse_ldd_lists_libraries_and_loader() -> None:
    assert rootfs.parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_static_binary_needs_nothing() -> None:
    assert rootfs.parse_ldd("\tnot a dynamic executable\n") == []


def test_parse_ldd_missing_library_is_an_error() -> None:
    with pytest.raises(NetfenceError, match=r"libfoo\.so\.1"):
        rootfs.parse_ldd("\tlibfoo.so.1 => not found\n")


def test_real_binary_libraries_exist() -> None:
    for library in rootfs.shared_libraries(Path("/bin/sh")):
        assert Path(library).exists(), library


def _tree(tmp_path: Path) -> Path:
    """usr/bin/prog, a merged-/usr style `bin -> usr/bin`, a link loop, a dir link."""
    base = tmp_path / "host"
    (base / "usr" / "bin").mkdir(parents=True)
    (base / "usr" / "bin" / "prog").write_text("#!/bin/true\n")
    (base / "usr" / "bin" / "prog").chmod(0o755)
    (base / "bin").symlink_to("usr/bin")
    (base / "usr" / "bin" / "alias").symlink_to("prog")
    (base / "usr" / "share" / "data").mkdir(parents=True)
    (base / "usr" / "share" / "data" / "a.txt").write_text("a")
    (base / "usr" / "share" / "data" / "__pycache__").mkdir()
    (base / "usr" / "share" / "data" / "loop").symlink_to("..")
    return base


def test_host_path_keeps_symlinks_and_their_targets(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_host_path(str(base / "bin" / "alias"))
    entries = fs.entries
    assert entries[str(base / "bin")] == ("symlink", "usr/bin")
    assert entries[str(base / "usr" / "bin" / "alias")] == ("symlink", "prog")
    assert entries[str(base / "usr" / "bin" / "prog")] == ("file", str(base / "usr/bin/prog"))
    assert entries[str(base / "usr")] == ("dir", "")


def test_tree_is_copied_without_caches_and_survives_link_loops(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_host_path(str(base / "usr" / "share"))
    data = base / "usr" / "share" / "data"
    assert fs.entries[str(data / "a.txt")][0] == "file"
    assert str(data / "__pycache__") not in fs.entries
    assert fs.entries[str(data / "loop")] == ("symlink", "..")


def test_missing_host_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NetfenceError, match="does not exist"):
        rootfs.Rootfs().add_host_path(str(tmp_path / "nope"))


def test_build_context_has_dockerfile_files_links_and_modes(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_program(str(base / "usr" / "bin" / "prog"), at="/usr/local/bin/prog")
    fs.add_host_path(str(base / "bin"))
    fs.add_text("/etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    fs.add_dir("/tmp", 0o1777)
    buffer = io.BytesIO()
    rootfs.write_context(fs, buffer, labels={"io.netfence.image": "x"})
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dockerfile = tar.extractfile("Dockerfile")
        assert dockerfile is not None
        text = dockerfile.read().decode()
    assert text.startswith("FROM scratch\nCOPY rootfs/ /\n")
    assert 'LABEL "io.netfence.image"="x"' in text and "ENV PATH=" in text
    prog = members["rootfs/usr/local/bin/prog"]
    assert prog.isfile() and prog.mode == 0o755 and prog.uid == 0
    link = members["rootfs" + str(base / "bin")]
    assert link.issym() and link.linkname == "usr/bin"
    assert members["rootfs/tmp"].mode == 0o1777
    assert members["rootfs/etc/passwd"].size > 0


def test_account_lines_keep_only_named_entries(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nproxy:x:13:13::/bin:/usr/sbin/nologin\n"
                      "alice:x:1000:1000::/home/alice:/bin/bash\n")
    lines = rootfs.account_lines(passwd, ("root", "proxy"))
    assert lines.splitlines() == ["root:x:0:0::/root:/bin/sh",
                                  "proxy:x:13:13::/bin:/usr/sbin/nologin"]
