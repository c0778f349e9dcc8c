"""Regenerate the committed ``_pb2`` modules from ``protos/``.

Run ``python -m devcluster._proto.gen`` after editing a .proto (needs grpcio-tools,
from the ``[test]`` extra). ``tests/test_proto_fresh.py`` fails when they are stale.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("helloworld.proto", "devcluster/control.proto")
OUT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Generate every module into ``out_dir`` (flat), imports rewritten to our package."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTOS:
            args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp}",
                    f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(ROOT / "protos" / proto)]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        written = []
        for path in sorted(Path(tmp).rglob("*_pb2*.py*")):
            text = path.read_text()
            # protoc writes `import helloworld_pb2` / `from devcluster import control_pb2`;
            # our modules live flat in devcluster._proto.
            text = re.sub(r"^import (\w+_pb2) as", r"from devcluster._proto import \1 as", text,
                          flags=re.M)
            text = re.sub(r"^from devcluster import (\w+_pb2) as",
                          r"from devcluster._proto import \1 as", text, flags=re.M)
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
        return written


if __name__ == "__main__":
    for p in generate(OUT):
        print(f"wrote {p.relative_to(ROOT)}")
    sys.exit(0)
