"""The committed ``devcluster/_proto`` modules match ``protos/*.proto``.

Regenerates each .proto with grpc_tools.protoc into a temp dir and compares the
serialized FileDescriptorProto embedded in the generated module (not the text: the
generator's version headers vary) with the committed module's ``DESCRIPTOR``, and
the RPC paths of the generated ``_pb2_grpc`` with the committed one. After editing a
.proto, run ``python -m devcluster._proto.gen``.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from devcluster._proto import control_pb2, control_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc

protoc = pytest.importorskip("grpc_tools.protoc")

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
_RPC_PATH = re.compile(r"['\"](/[\w.]+/\w+)['\"]")

CASES = [
    pytest.param("helloworld.proto", helloworld_pb2, helloworld_pb2_grpc, id="helloworld"),
    pytest.param("devcluster/control.proto", control_pb2, control_pb2_grpc, id="control"),
]


def generate(proto_root: Path, proto: str, out: Path) -> tuple[bytes, str]:
    """(serialized FileDescriptorProto, _pb2_grpc source) freshly generated from ``proto``."""
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(proto_root / proto)])
    assert code == 0, f"protoc failed on {proto}"
    stem = proto.removesuffix(".proto")
    return (serialized_file(out / f"{stem}_pb2.py"),
            (out / f"{stem}_pb2_grpc.py").read_text())


def serialized_file(module_path: Path) -> bytes:
    """The bytes passed to ``AddSerializedFile(...)`` in a generated _pb2 module."""
    tree = ast.parse(module_path.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            arg = node.args[0]
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, bytes)
            return arg.value
    raise AssertionError(f"no AddSerializedFile(...) in {module_path}")


def rpc_paths(grpc_source: str) -> set[str]:
    return set(_RPC_PATH.findall(grpc_source))


def describe(serialized: bytes) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(serialized)


@pytest.mark.parametrize(("proto", "pb2", "pb2_grpc"), CASES)
def test_descriptor_matches_the_proto(proto: str, pb2: ModuleType, pb2_grpc: ModuleType,
                                      tmp_path: Path) -> None:
    fresh, _ = generate(PROTOS, proto, tmp_path)
    committed = pb2.DESCRIPTOR.serialized_pb
    if fresh != committed:
        # Show the difference readably before failing.
        assert describe(fresh) == describe(committed), \
            f"{proto} changed: run `python -m devcluster._proto.gen`"
        pytest.fail(f"{proto}: same descriptor, different serialization; "
                    "run `python -m devcluster._proto.gen`")


@pytest.mark.parametrize(("proto", "pb2", "pb2_grpc"), CASES)
def test_service_methods_match_the_proto(proto: str, pb2: ModuleType, pb2_grpc: ModuleType,
                                         tmp_path: Path) -> None:
    fresh, fresh_grpc = generate(PROTOS, proto, tmp_path)
    committed_grpc = Path(pb2_grpc.__file__).read_text()
    assert rpc_paths(committed_grpc) == rpc_paths(fresh_grpc), \
        f"{proto}: stale {Path(pb2_grpc.__file__).name}; run `python -m devcluster._proto.gen`"
    # The descriptor's services agree with the stub paths too.
    descriptor = describe(fresh)
    from_descriptor = {f"/{descriptor.package}.{s.name}/{m.name}"
                       for s in descriptor.service for m in s.method}
    assert from_descriptor == rpc_paths(committed_grpc)
    committed_methods = {(s.name, m.name) for s in pb2.DESCRIPTOR.services_by_name.values()
                         for m in s.methods}
    assert committed_methods == {(s.name, m.name) for s in descriptor.service
                                 for m in s.method}


def test_control_plane_has_the_documented_verbs() -> None:
    methods = {m.name for m in control_pb2.DESCRIPTOR.services_by_name["Control"].methods}
    assert {"Ps", "Down", "Kill", "Stop", "Start", "Restart", "Pause", "Resume",
            "Scale"} <= methods


def test_an_edited_proto_is_detected(tmp_path: Path) -> None:
    """The check is not vacuous: adding a field or an RPC changes what we compare."""
    edited = tmp_path / "protos"
    shutil.copytree(PROTOS, edited)
    path = edited / "helloworld.proto"
    text = path.read_text()
    text, n = re.subn(r"(message HelloRequest \{)", r"\1\n  int32 extra = 99;", text)
    assert n == 1
    text, n = re.subn(r"(service Greeter \{)",
                      r"\1\n  rpc SayBye (HelloRequest) returns (HelloReply) {}", text)
    assert n == 1
    path.write_text(text)
    fresh, fresh_grpc = generate(edited, "helloworld.proto", tmp_path / "out")
    assert fresh != helloworld_pb2.DESCRIPTOR.serialized_pb
    assert "/helloworld.Greeter/SayBye" in rpc_paths(fresh_grpc)
    assert rpc_paths(fresh_grpc) != rpc_paths(Path(helloworld_pb2_grpc.__file__).read_text())
