"""The pure side of ``devcluster call``: method names, .proto compilation, JSON to messages,
and descriptors by reflection from a real in-process server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client.dynamic import (
    MethodRef,
    NoReflectionError,
    ProtoError,
    compile_proto,
    find_by_reflection,
    method_from_pool,
    method_from_reflection,
    parse_method,
    proto_services,
)
from devcluster.errors import DevclusterError, UsageError

PROTOS = Path(__file__).parent / "protos"
ECHO = PROTOS / "echo.proto"


@pytest.mark.parametrize(("text", "ref"), [
    ("helloworld.Greeter/SayHello", MethodRef("helloworld.Greeter", "SayHello")),
    ("/helloworld.Greeter/SayHello", MethodRef("helloworld.Greeter", "SayHello")),
    ("helloworld.Greeter.SayHello", MethodRef("helloworld.Greeter", "SayHello")),
    ("a.b.c.Svc/Do_it", MethodRef("a.b.c.Svc", "Do_it")),
    ("Greeter/SayHello", MethodRef("Greeter", "SayHello")),
])
def test_method_names_as_grpcurl_writes_them(text: str, ref: MethodRef) -> None:
    assert parse_method(text) == ref
    assert ref.path == f"/{ref.service}/{ref.method}"


@pytest.mark.parametrize("text", ["SayHello", "Greeter.SayHello", "a.B/", "a.B/c/d", "a b/C",
                                  "", "1pkg.Svc/M"])
def test_bad_method_names(text: str) -> None:
    with pytest.raises(UsageError, match=r"write it as package\.Service/Method"):
        parse_method(text)


def test_a_proto_compiled_at_run_time_gives_request_and_reply_types() -> None:
    pool = compile_proto(ECHO)
    assert proto_services(pool, ECHO) == ["echo.Echo"]
    method = method_from_pool(pool, parse_method("echo.Echo/Say"))
    request = method.request('{"text": "hi", "times": 2, "tags": ["a"]}')
    assert (request.text, request.times, list(request.tags)) == ("hi", 2, ["a"])
    assert method.request(None) == method.request_class()
    reply = method.response_class(text="hihi", instance="echo.1")
    reply.at.FromSeconds(0)
    assert method.reply_dict(reply) == {"text": "hihi", "instance": "echo.1",
                                        "at": "1970-01-01T00:00:00Z"}
    assert method.reply_json(reply).startswith('{"text": "hihi", ')


def test_proto_with_imports_from_another_dir(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "common.proto").write_text(
        'syntax = "proto3";\npackage lib;\nmessage Id { string v = 1; }\n')
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "svc.proto").write_text(
        'syntax = "proto3";\npackage svc;\nimport "lib/common.proto";\n'
        "service S { rpc Get (lib.Id) returns (lib.Id); }\n")
    pool = compile_proto(tmp_path / "api" / "svc.proto", [tmp_path])
    method = method_from_pool(pool, parse_method("svc.S/Get"))
    assert method.request('{"v": "x"}').v == "x"
    with pytest.raises(ProtoError, match=r"does not compile: .*lib/common.proto"):
        compile_proto(tmp_path / "api" / "svc.proto", [tmp_path / "nowhere"])


# Every way to get --proto, METHOD or -d wrong: (method, data, error type, fragment).
BAD = {
    "unknown service": ("echo.Ecko/Say", "{}", UsageError,
                        "unknown service 'echo.Ecko'; did you mean 'echo.Echo'? services: echo.Echo"),
    "unknown method": ("echo.Echo/Sey", "{}", UsageError,
                       "echo.Echo has no method 'Sey'; did you mean 'Say'? methods: Count, Say"),
    "streaming method": ("echo.Echo/Count", "{}", UsageError, "is a server-streaming method"),
    "unknown field": ("echo.Echo/Say", '{"txt": "a"}', UsageError,
                      'has no field named "txt"'),
    "wrong type": ("echo.Echo/Say", '{"times": "many"}', UsageError,
                   "-d does not fit echo.SayRequest"),
    "not json": ("echo.Echo/Say", "{text: a}", UsageError, "its fields: text, times, tags"),
    "a list": ("echo.Echo/Say", "[1]", UsageError, "-d does not fit"),
}


@pytest.mark.parametrize(("method", "data", "error", "fragment"), BAD.values(), ids=BAD.keys())
def test_bad_method_or_request_is_one_line(method: str, data: str, error: type[Exception],
                                           fragment: str) -> None:
    pool = compile_proto(ECHO)
    with pytest.raises(error) as caught:
        method_from_pool(pool, parse_method(method), proto_services(pool, ECHO)).request(data)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2  # type: ignore[attr-defined]


def test_bad_proto_files(tmp_path: Path) -> None:
    with pytest.raises(ProtoError, match="no such file"):
        compile_proto(tmp_path / "missing.proto")
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nmessage X {\n')
    with pytest.raises(ProtoError, match=r"bad.proto does not compile: .*bad.proto:3:1"):
        compile_proto(tmp_path / "bad.proto")
    # Issue 26 item 16: a file without `syntax` (a README) makes protoc log absl's
    # preamble first; the error named is the file's, not "WARNING: All log messages...".
    (tmp_path / "README.md").write_text("# My service\n\nCall it with `devcluster call`.\n")
    with pytest.raises(ProtoError, match=r"README.md does not compile: .*README.md:1:1: ") as e:
        compile_proto(tmp_path / "README.md")
    assert "absl" not in str(e.value) and "edition" not in str(e.value)


class _Greeter(helloworld_pb2_grpc.GreeterServicer):
    def SayHello(self, request: helloworld_pb2.HelloRequest,
                 context: grpc.ServicerContext) -> helloworld_pb2.HelloReply:
        return helloworld_pb2.HelloReply(message=f"Hello {request.name}")


def _server(with_reflection: bool) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(_Greeter(), server)
    if with_reflection:
        reflection.enable_server_reflection(("helloworld.Greeter", reflection.SERVICE_NAME),
                                            server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def servers() -> Iterator[dict[str, str]]:
    with_, without = _server(True), _server(False)
    yield {"reflecting": with_[1], "plain": without[1]}
    for server, _ in (with_, without):
        server.stop(None)


def test_reflection_gives_the_types_and_a_call_works(servers: dict[str, str]) -> None:
    ref = parse_method("helloworld.Greeter/SayHello")
    with grpc.insecure_channel(servers["reflecting"]) as channel:
        method = method_from_reflection(channel, ref)
        reply = method.multicallable(channel)(method.request('{"name": "x"}'), timeout=5)
    assert method.reply_dict(reply) == {"message": "Hello x"}
    with grpc.insecure_channel(servers["plain"]) as channel, \
            pytest.raises(NoReflectionError, match=r"pass --proto FILE\.proto"):
        method_from_reflection(channel, ref)


def test_find_by_reflection_names_the_services_that_know_the_method(
        servers: dict[str, str]) -> None:
    ref = parse_method("helloworld.Greeter/SayHello")
    method, knowing = find_by_reflection(servers, ref)
    assert knowing == ["reflecting"] and method.ref == ref
    with pytest.raises(NoReflectionError):
        find_by_reflection({"plain": servers["plain"]}, ref)
    with pytest.raises(UsageError, match=r"unknown service 'x\.Y'; services: helloworld\.Greeter"):
        find_by_reflection(servers, parse_method("x.Y/Z"))
    with pytest.raises(DevclusterError, match="UNAVAILABLE"):
        find_by_reflection({"gone": "127.0.0.1:1"}, ref, timeout=1)


class _IncompleteReflection:
    """A reflection service that describes its file without the files it imports (as
    grpc-js's @grpc/reflection does): x.Svc/Do takes a google.protobuf.Empty."""

    def ServerReflectionInfo(self, requests, context):
        from google.protobuf import descriptor_pb2
        from grpc_reflection.v1alpha import reflection_pb2

        proto = descriptor_pb2.FileDescriptorProto(name="x.proto", package="x")
        service = proto.service.add(name="Svc")
        service.method.add(name="Do", input_type=".google.protobuf.Empty",
                           output_type=".google.protobuf.Empty")
        for request in requests:
            if request.HasField("list_services"):
                yield reflection_pb2.ServerReflectionResponse(
                    list_services_response=reflection_pb2.ListServiceResponse(
                        service=[reflection_pb2.ServiceResponse(name="x.Svc")]))
            else:
                yield reflection_pb2.ServerReflectionResponse(
                    file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                        file_descriptor_proto=[proto.SerializeToString()]))


def test_reflection_that_omits_imports_is_one_line_naming_proto() -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_IncompleteReflection(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, \
                pytest.raises(NoReflectionError, match=r"does not describe x\.Svc completely"
                                                       r".*pass --proto FILE\.proto"):
            method_from_reflection(channel, parse_method("x.Svc/Do"))
    finally:
        server.stop(None)
