"""Container images for a real test node, made from this machine's own files (nothing can be pulled):
a single-layer docker-archive tarball per image, cached by the hash of everything that goes into it,
outside the repo like the Go builds, so a warm run builds nothing.

- the workspace image: bash, coreutils, python3 (the standard library and its shared libraries), a
  tiny HTTP server as its default command, and an /etc/passwd that knows only root and nobody, as a
  stock image that has never heard of a lab user;
- the pause image: a static busybox that sleeps, used as containerd's sandbox image and under the
  name of labkeeper's hold image."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RECIPE_VERSION = "1"
PYTHON = "/usr/bin/python3"
WORKSPACE_TOOLS = ("bash", "sh", "ls", "cat", "id", "whoami", "stat", "touch", "rm", "mkdir", "env", "sleep",
                   "echo", "head", "tail", "cut", "tr", "wc", "sort", "date", "chmod", "cp", "mv", "ln", "true",
                   "false", "test", "pwd", "dirname", "basename", "printenv", "hostname", "ps", "kill", "groups",
                   "readlink", "realpath", "tee", "uname", "df", "du", "mktemp", "seq", "grep")
PYTHON_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "unittest",
               "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages"}
WORKSPACE_PORT = 8000
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_root() -> Path:
    base = os.environ.get("LABKEEPER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labkeeper"
    return Path(base) / "images"


@dataclass
class Rootfs:
    """Files to copy from this machine (image path -> host path), links, directories and literal files."""

    files: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    literal: dict[str, tuple[bytes, int]] = field(default_factory=dict)

    def add_host_path(self, path: str) -> None:
        """Adds a host file under its own path, following symlinks (each link stays a link)."""
        p = Path(path)
        parent = Path(os.path.realpath(p.parent))
        here = parent / p.name
        key = str(here)
        if key in self.files or key in self.links:
            return
        if here.is_symlink():
            target = os.readlink(here)
            self.links[key] = target
            self.add_host_path(str(parent / target) if not target.startswith("/") else target)
        elif here.is_file():
            self.files[key] = key

    def add_with_libraries(self, binaries: Iterable[str]) -> None:
        binaries = list(binaries)
        for binary in binaries:
            self.add_host_path(binary)
        for lib in _shared_libraries(binaries):
            self.add_host_path(lib)

    def digest(self) -> str:
        h = hashlib.sha256(RECIPE_VERSION.encode())
        for path in sorted(self.files):
            h.update(path.encode() + b"\0")
            h.update(hashlib.sha256(Path(self.files[path]).read_bytes()).digest())
        for table in (self.links, self.dirs):
            h.update(json.dumps(table, sort_keys=True).encode())
        for path in sorted(self.literal):
            data, mode = self.literal[path]
            h.update(path.encode() + b"\0" + data + str(mode).encode())
        return h.hexdigest()

    def layer(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            parents: set[str] = set()

            def dir_entry(path: str, mode: int = 0o755) -> None:
                if path in parents or path in ("", "/"):
                    return
                dir_entry(str(Path(path).parent), 0o755)
                parents.add(path)
                info = tarfile.TarInfo(path.lstrip("/"))
                info.type, info.mode = tarfile.DIRTYPE, self.dirs.get(path, mode)
                tar.addfile(info)

            for path in sorted(self.dirs):
                dir_entry(path, self.dirs[path])
            for path in sorted(self.links):
                dir_entry(str(Path(path).parent))
                info = tarfile.TarInfo(path.lstrip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, self.links[path]
                tar.addfile(info)
            for path in sorted(self.files):
                dir_entry(str(Path(path).parent))
                host = Path(self.files[path])
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode = host.stat().st_size, host.stat().st_mode & 0o7777
                with host.open("rb") as fh:
                    tar.addfile(info, fh)
            for path in sorted(self.literal):
                dir_entry(str(Path(path).parent))
                data, mode = self.literal[path]
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _shared_libraries(binaries: Sequence[str]) -> set[str]:
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
                libs.add(parts[parts.index("=>") + 1])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])
    return libs


def _merged_usr(rootfs: Rootfs) -> None:
    for top in ("bin", "lib", "lib64", "sbin"):
        rootfs.links[f"/{top}"] = f"usr/{top}"


@dataclass(frozen=True)
class Image:
    name: str
    tarball: Path


def docker_archive(rootfs: Rootfs, repository: str, config: dict, cache: Path | None = None) -> Image:
    """The image `repository:<content hash>` as a docker-archive tarball in the cache (built if missing)."""
    digest = rootfs.digest()
    tag = digest[:16]
    name = f"{repository}:{tag}"
    cache = cache or cache_root()
    tarball = cache / f"{repository.replace('/', '_')}-{tag}.tar"
    if tarball.exists():
        return Image(name, tarball)
    cache.mkdir(parents=True, exist_ok=True)
    layer = rootfs.layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{"created_by": "labkeeper.testing.images"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()
    partial = tarball.with_suffix(f".partial-{os.getpid()}")
    with tarfile.open(partial, "w") as out:
        for member, data in (("layer.tar", layer), (config_name, image_config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    partial.rename(tarball)
    return Image(name, tarball)


def workspace_image(cache: Path | None = None) -> Image:
    rootfs = Rootfs()
    _merged_usr(rootfs)
    tools = [shutil.which(t) or f"/usr/bin/{t}" for t in WORKSPACE_TOOLS]
    python = os.path.realpath(PYTHON)
    version = Path(python).name  # python3.11
    stdlib = Path("/usr/lib") / version
    extensions = sorted(str(p) for p in (stdlib / "lib-dynload").glob("*.so"))
    rootfs.add_with_libraries([t for t in tools if Path(t).exists()] + [PYTHON, *extensions])
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in PYTHON_SKIP or "__pycache__" in rel.parts:
            continue
        if path.is_file() and not path.is_symlink():
            rootfs.files[str(path)] = str(path)
    rootfs.links["/usr/bin/sh"] = "bash"
    rootfs.dirs.update({"/tmp": 0o1777, "/home": 0o755, "/root": 0o700, "/proc": 0o555, "/sys": 0o555,
                        "/dev": 0o755, "/etc": 0o755, "/var/tmp": 0o1777, "/srv": 0o755})
    rootfs.literal.update({
        "/etc/passwd": (b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644),
        "/etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        # Debian's prompt: her name in it shows whether the container knows who she is
        "/etc/bash.bashrc": (b"PS1='\\u@\\h:\\w\\$ '\n", 0o644),
        "/etc/hostname": (b"workspace\n", 0o644),
    })
    config = {"Env": [PATH_ENV, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
              "Cmd": [PYTHON, "-m", "http.server", str(WORKSPACE_PORT)], "WorkingDir": "/"}
    return docker_archive(rootfs, "labkeeper.local/workspace", config, cache)


def pause_image(cache: Path | None = None) -> Image:
    rootfs = Rootfs()
    _merged_usr(rootfs)
    busybox = os.path.realpath(shutil.which("busybox") or "/bin/busybox")
    rootfs.add_with_libraries([busybox])  # busybox-static has none
    rootfs.dirs.update({"/proc": 0o555, "/sys": 0o555, "/dev": 0o755, "/etc": 0o755})
    # PID 1 ignores SIGTERM without a handler; the runtime SIGKILLs a sandbox on stop anyway
    config = {"Entrypoint": [busybox, "sleep", "2147483647"], "Env": [PATH_ENV]}
    return docker_archive(rootfs, "labkeeper.local/pause", config, cache)


# what the Dockerfile's build depends on besides the package's own sources (README only feeds the metadata;
# of pyproject.toml only what pip install reads for the image, not the dev extras or the tools' settings)
PRODUCT_BASE_SOURCES = ("Dockerfile", "hack/image.sh", "hack/image-base.sh")
PACKAGE = "labkeeper"
_SITE_PACKAGES_MARKER = f"/site-packages/{PACKAGE}/__init__.py"


def _hash_paths(repo: Path, sources: Sequence[str], h=None):
    h = h or hashlib.sha256(RECIPE_VERSION.encode())
    for source in sources:
        root = repo / source
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in paths:
            if "__pycache__" in path.parts or not path.exists():
                continue
            h.update(str(path.relative_to(repo)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h


def _install_metadata(repo: Path):
    """A hash of what `pip install` takes from pyproject.toml for the image: the project less its extras, the
    build system and setuptools' settings."""
    doc = tomllib.loads((repo / "pyproject.toml").read_text())
    project = {k: v for k, v in doc.get("project", {}).items() if k != "optional-dependencies"}
    wanted = {"project": project, "build-system": doc.get("build-system"),
              "setuptools": doc.get("tool", {}).get("setuptools")}
    return hashlib.sha256(RECIPE_VERSION.encode() + json.dumps(wanted, sort_keys=True).encode())


def _installed(relative: str) -> bool:
    return "__pycache__" not in relative.split("/") and (relative.endswith(".py") or relative.endswith("/py.typed"))


def _package_files(repo: Path) -> dict[str, bytes]:
    """The files pip installs from operator/labkeeper (its modules and py.typed), by path below the package:
    from the working tree, or from the git revision in LABKEEPER_IMAGE_REVISION (e.g. HEAD), so that other
    people's half-saved edits in a shared tree stay out of the image."""
    revision = os.environ.get("LABKEEPER_IMAGE_REVISION")
    root = repo / "operator" / PACKAGE
    if not revision:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and _installed(str(p.relative_to(repo)))}
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", revision, f"operator/{PACKAGE}"],
                             check=True, capture_output=True).stdout
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            if member.isfile() and _installed(member.name):
                files[member.name.removeprefix(f"operator/{PACKAGE}/")] = tar.extractfile(member).read()
    return dict(sorted(files.items()))


def product_image(repo: Path, cache: Path | None = None) -> Image:
    """labkeeper's own image: the Dockerfile built with buildah (`make image`), then the labkeeper package in it
    replaced by this tree's sources as one more layer. The Dockerfile's build is cached by the hash of what it
    depends on besides the package (Dockerfile, pyproject.toml, the build scripts): a cold build writes about
    7 GB through buildah's vfs driver and takes minutes, and the package changes with every commit under
    operator/, so a change there costs only a new top layer (a second). The layer hides the installed package
    directory (an opaque whiteout) and puts the sources there, as `pip install` would have put them, without
    byte-compiled files (the image runs with PYTHONDONTWRITEBYTECODE; modules compile in memory)."""
    cache = cache or cache_root()
    base_key = _hash_paths(repo, PRODUCT_BASE_SOURCES, _install_metadata(repo)).hexdigest()[:16]
    files = _package_files(repo)
    h = hashlib.sha256(base_key.encode())
    for relative, data in files.items():
        h.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    tag = h.hexdigest()[:16]
    name = f"localhost/labkeeper/labkeeper:{tag}"
    tarball = cache / f"labkeeper-{tag}.tar"
    if tarball.exists():
        return Image(name, tarball)
    cache.mkdir(parents=True, exist_ok=True)
    base = _product_base(repo, base_key, cache)
    partial = tarball.with_suffix(f".partial-{os.getpid()}")
    _with_package_layer(base, files, name, partial)
    partial.rename(tarball)
    return Image(name, tarball)


def _product_base(repo: Path, key: str, cache: Path) -> Path:
    """The Dockerfile's image as a docker-archive, built once per base key."""
    tarball = cache / f"labkeeper-base-{key}.tar"
    if tarball.exists():
        return tarball
    name = f"localhost/labkeeper/labkeeper-base:{key}"
    subprocess.run(["bash", str(repo / "hack" / "image.sh")], check=True, cwd=repo, env={**os.environ, "IMAGE": name},
                   stdout=subprocess.DEVNULL)
    storage = ["--storage-driver", os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs")]
    partial = tarball.with_suffix(f".partial-{os.getpid()}")
    subprocess.run(["buildah", *storage, "push", "--quiet", name, f"docker-archive:{partial}:{name}"], check=True,
                   stdout=subprocess.DEVNULL)
    partial.rename(tarball)
    # the archive is what is kept; vfs holds a full copy of the tree per layer (gigabytes per build)
    subprocess.run(["buildah", *storage, "rmi", name], check=False, capture_output=True)
    return tarball


def _with_package_layer(base: Path, files: dict[str, bytes], name: str, out: Path) -> None:
    """`base` (a docker-archive) plus a layer that replaces its installed labkeeper package with `files`."""
    with tarfile.open(base) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())[0]
        config = json.loads(archive.extractfile(manifest["Config"]).read())
        package_dir = None
        for layer_name in reversed(manifest["Layers"]):
            with tarfile.open(fileobj=archive.extractfile(layer_name)) as layer:
                for member in layer:
                    if member.name.endswith(_SITE_PACKAGES_MARKER):
                        package_dir = member.name.removesuffix("/__init__.py").lstrip("./")
                        break
            if package_dir:
                break
        if package_dir is None:
            raise RuntimeError(f"{base}: no installed {PACKAGE} package (…{_SITE_PACKAGES_MARKER}) in any layer")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
            directories = {package_dir} | {f"{package_dir}/{Path(relative).parent}".rstrip("/.") for relative in files}
            for directory in sorted(directories):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                layer.addfile(info)
            # an opaque whiteout: nothing of the installed package shows through, so a removed module is gone
            layer.addfile(tarfile.TarInfo(f"{package_dir}/.wh..wh..opq"), io.BytesIO(b""))
            for relative, data in files.items():
                info = tarfile.TarInfo(f"{package_dir}/{relative}")
                info.size, info.mode = len(data), 0o644
                layer.addfile(info, io.BytesIO(data))
        layer_bytes = buf.getvalue()
        config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer_bytes).hexdigest())
        config.setdefault("history", []).append({"created_by": "labkeeper.testing.images: the package from the tree"})
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        new_layer = hashlib.sha256(layer_bytes).hexdigest() + "/layer.tar"
        manifest_bytes = json.dumps([{"Config": config_name, "RepoTags": [name],
                                      "Layers": [*manifest["Layers"], new_layer]}]).encode()
        with tarfile.open(out, "w") as result:
            for layer_name in manifest["Layers"]:
                member = archive.getmember(layer_name)
                result.addfile(member, archive.extractfile(member))
            for member_name, data in ((new_layer, layer_bytes), (config_name, config_bytes),
                                      ("manifest.json", manifest_bytes)):
                info = tarfile.TarInfo(member_name)
                info.size = len(data)
                result.addfile(info, io.BytesIO(data))
