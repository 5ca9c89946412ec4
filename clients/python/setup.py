"""Build hook: compile the imprint protos into ``imprint_client.pb``.

The stubs are generated with grpcio-tools while the wheel is built, from
``proto/imprint/v1/*.proto`` of the source tree this directory sits in
(or ``$IMPRINT_SOURCE_DIR``), and never committed: they cannot drift from
the protos the daemon is built from. The version is the workspace's
(``Cargo.toml``), so the wheel and the binaries of one tree agree.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTOS = ("agent", "images", "operations")

# protoc writes `from imprint.v1 import x_pb2 as ...`: the modules are
# shipped inside imprint_client.pb instead (no top-level `imprint`
# package), so those imports become relative. The descriptors keep their
# names (`imprint/v1/agent.proto`, `imprint.v1.Image`), as the daemon's
# reflection has them.
ABSOLUTE_IMPORT = re.compile(r"^from imprint\.v1 import ", re.MULTILINE)
# The classes' __module__ (repr, pickle) names where they really live.
MODULE_NAME = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'imprint\.v1\.")
ANY_IMPRINT_IMPORT = re.compile(r"^\s*(from|import)\s+imprint\b", re.MULTILINE)


def source_root() -> Path:
    root = os.environ.get("IMPRINT_SOURCE_DIR")
    path = Path(root) if root else Path(__file__).resolve().parents[2]
    if not (path / "proto" / "imprint" / "v1" / "images.proto").is_file():
        raise SystemExit(
            f"no proto/imprint/v1/*.proto under {path}: build the wheel from "
            "clients/python of an imprint source tree, or set IMPRINT_SOURCE_DIR"
        )
    return path


def workspace_version(root: Path) -> str:
    import tomllib  # Python 3.11+, at build time only

    with open(root / "Cargo.toml", "rb") as f:
        return str(tomllib.load(f)["workspace"]["package"]["version"])


class BuildPyWithStubs(build_py):
    """build_py, then protoc into the built ``imprint_client/pb``."""

    def run(self) -> None:
        super().run()
        self.generate(Path(self.build_lib) / "imprint_client" / "pb")

    def generate(self, out: Path) -> None:
        from grpc_tools import protoc

        protos = source_root() / "proto"
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                "grpc_tools.protoc",
                f"--proto_path={protos}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(protos / "imprint" / "v1" / f"{p}.proto") for p in PROTOS),
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed: {' '.join(args)}")
            out.mkdir(parents=True, exist_ok=True)
            generated = sorted(Path(tmp, "imprint", "v1").iterdir())
            for f in generated:
                text = ABSOLUTE_IMPORT.sub("from . import ", f.read_text())
                text = MODULE_NAME.sub(r"\1'imprint_client.pb.", text)
                if ANY_IMPRINT_IMPORT.search(text):
                    raise SystemExit(f"{f.name}: an import of `imprint` is left after the rewrite")
                (out / f.name).write_text(text)
            self.announce(f"generated {len(generated)} files into {out}", level=2)


setup(
    version=workspace_version(source_root()),
    cmdclass={"build_py": BuildPyWithStubs},
)
