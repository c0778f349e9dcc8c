"""Call any unary gRPC method by name: types from server reflection or a .proto compiled now.

The library side of ``devcluster call``: no typer, no rich. ``METHOD`` is written
like grpcurl's, ``package.Service/Method`` (``package.Service.Method`` too). The
request and response types come from the server's reflection service (what
grpcurl does), or, for a server without it, from a ``.proto`` file compiled at run
time by grpcio-tools' protoc into a descriptor set (no generated modules).

>>> parse_method("helloworld.Greeter/SayHello")
MethodRef(service='helloworld.Greeter', method='SayHello')

>>> m = method_from_reflection(channel, parse_method("helloworld.Greeter/SayHello"))  # doctest: +SKIP
>>> reply, call = m.multicallable(channel).with_call(m.request('{"name": "x"}'), timeout=2)  # doctest: +SKIP
>>> m.reply_dict(reply)                                                              # doctest: +SKIP
{'message': 'Hello x from server1'}
"""

from __future__ import annotations

import collections
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from devcluster.errors import DevclusterError, UsageError

_METHOD = re.compile(r"/?(?P<service>[A-Za-z_][\w.]*)[/.](?P<method>[A-Za-z_]\w*)")
#: Each reflection request gets this long (a frozen instance must not hang `call`).
REFLECTION_TIMEOUT = 5.0


class NoReflectionError(DevclusterError):
    """The server offers no reflection service and no ``--proto`` was given (exit 1)."""


class ProtoError(UsageError):
    """The ``--proto`` file does not compile (exit 2)."""


class UnknownServiceError(UsageError):
    """No server (or .proto) defines the service (exit 2); ``services`` are the known ones."""

    def __init__(self, service: str, services: Sequence[str]) -> None:
        self.service = service
        self.services = sorted(s for s in set(services) if not s.startswith("grpc."))
        close = difflib.get_close_matches(service, self.services, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"unknown service {service!r}; {hint}services: "
                         f"{', '.join(self.services) or 'none found'}")


@dataclass(frozen=True)
class MethodRef:
    """``package.Service/Method`` split in two."""

    service: str
    method: str

    @property
    def path(self) -> str:
        """The HTTP/2 path of the method: ``/package.Service/Method``."""
        return f"/{self.service}/{self.method}"


def parse_method(text: str) -> MethodRef:
    """``pkg.Svc/Method`` or ``pkg.Svc.Method`` (grpcurl's forms); UsageError otherwise."""
    match = _METHOD.fullmatch(text.strip())
    if not match or ("." not in match.group("service") and "/" not in text):
        raise UsageError(f"bad method {text!r}; write it as package.Service/Method, "
                         "e.g. helloworld.Greeter/SayHello")
    return MethodRef(match.group("service"), match.group("method"))


@dataclass(frozen=True)
class DynamicMethod:
    """A unary method with message classes built from its descriptors."""

    ref: MethodRef
    descriptor: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]

    def request(self, data: str | None) -> Message:
        """The request message from JSON text (None or "": an empty message)."""
        message = self.request_class()
        if not data or not data.strip():
            return message
        try:
            json_format.Parse(data, message, descriptor_pool=self.descriptor.containing_service.file.pool)
        except json_format.ParseError as e:
            fields = ", ".join(f.json_name for f in self.request_class.DESCRIPTOR.fields) or "none"
            reason = (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
            raise UsageError(f"-d does not fit {self.request_class.DESCRIPTOR.full_name}: "
                             f"{reason}; its fields: {fields}") from None
        return message

    def reply_dict(self, reply: Message) -> dict[str, Any]:
        """The reply as the proto3 JSON mapping (grpcurl's output)."""
        data: dict[str, Any] = json_format.MessageToDict(
            reply, descriptor_pool=self.descriptor.containing_service.file.pool)
        return data

    def reply_json(self, reply: Message) -> str:
        """The reply as one line of JSON."""
        return json.dumps(self.reply_dict(reply), separators=(", ", ": "))

    def multicallable(self, channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
        """``channel.unary_unary`` for this method, with the messages' (de)serializers."""
        return channel.unary_unary(self.ref.path,
                                   request_serializer=self.request_class.SerializeToString,
                                   response_deserializer=self.response_class.FromString)


def method_from_pool(pool: descriptor_pool.DescriptorPool, ref: MethodRef,
                     services: Sequence[str] = ()) -> DynamicMethod:
    """Look ``ref`` up in ``pool``; ``services`` (known names) make the error helpful."""
    try:
        service: ServiceDescriptor = pool.FindServiceByName(ref.service)
    except KeyError:
        raise UnknownServiceError(ref.service, services) from None
    method = service.methods_by_name.get(ref.method)
    if method is None:
        names = sorted(service.methods_by_name)
        close = difflib.get_close_matches(ref.method, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"{ref.service} has no method {ref.method!r}; {hint}methods: "
                         f"{', '.join(names)}")
    if method.client_streaming or method.server_streaming:
        kind = "client" if method.client_streaming else "server"
        raise UsageError(f"{ref.service}/{ref.method} is a {kind}-streaming method; "
                         "`devcluster call` calls unary methods only")
    return DynamicMethod(ref, method, message_factory.GetMessageClass(method.input_type),
                         message_factory.GetMessageClass(method.output_type))


# -- where the descriptors come from ------------------------------------------------

class _Details(
        collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                            "wait_for_ready", "compression")),
        grpc.ClientCallDetails):  # type: ignore[misc]  # grpc ships no types
    """The call details grpc's interceptors pass on (grpc's documented pattern)."""


class _Deadline(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Gives every stream-stream call a deadline (the reflection client sets none)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        fixed = _Details(details.method, details.timeout or self.timeout, details.metadata,
                         details.credentials, details.wait_for_ready, details.compression)
        return continuation(fixed, requests)


def method_from_reflection(channel: grpc.Channel, ref: MethodRef,
                           timeout: float = REFLECTION_TIMEOUT) -> DynamicMethod:
    """Ask the server behind ``channel`` for ``ref``'s descriptors (v1alpha reflection).

    ``channel`` should lead to one server (``grpc.insecure_channel``): reflection is a
    stream, and streams are not what a balancing channel is for.
    """
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    database = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(channel,
                                                                        _Deadline(timeout)))
    pool = descriptor_pool.DescriptorPool(descriptor_db=database)
    try:
        services = list(database.get_services())
        return method_from_pool(pool, ref, services)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise NoReflectionError(
                f"the server offers no reflection service, so the types of {ref.service} are "
                "unknown; pass --proto FILE.proto (and -I DIR for its imports)") from None
        details = e.details() if hasattr(e, "details") else str(e)
        raise DevclusterError(f"cannot ask the server for {ref.service}: "
                              f"{getattr(code, 'name', 'error')}: {details}") from None
    except TypeError as e:
        # The reflection answer does not build a pool: e.g. grpc-js's reflection names
        # its files itself and lists none of their imports ("couldn't resolve name
        # '.google.protobuf.Empty'").
        raise NoReflectionError(
            f"the server's reflection does not describe {ref.service} completely ({e}); "
            "pass --proto FILE.proto (and -I DIR for its imports)") from None


def find_by_reflection(addresses: Mapping[str, str], ref: MethodRef,
                       timeout: float = REFLECTION_TIMEOUT) -> tuple[DynamicMethod, list[str]]:
    """Ask one instance of each registry service (``{service: address}``) for ``ref``.

    Returns the method and the registry services whose servers know it. Raises the
    most telling error when none does: a UsageError (no such service or method)
    over NoReflectionError over an unreachable server.
    """
    found: DynamicMethod | None = None
    knowing: list[str] = []
    errors: list[DevclusterError] = []
    for service, address in sorted(addresses.items()):
        with grpc.insecure_channel(address) as channel:
            try:
                method = method_from_reflection(channel, ref, timeout)
            except DevclusterError as e:
                errors.append(e)
                continue
        found = found or method
        knowing.append(service)
    if found is not None:
        return found, knowing
    if not errors:
        raise DevclusterError("no serving instance to ask for the types of "
                              f"{ref.service}; start the cluster (`devcluster up`) or check --service")
    unknown = [e for e in errors if isinstance(e, UnknownServiceError)]
    if unknown and all(not isinstance(e, UsageError) or e in unknown for e in errors):
        raise UnknownServiceError(ref.service, [s for e in unknown for s in e.services])
    rank = {UsageError: 0, NoReflectionError: 1}
    raise min(errors, key=lambda e: next((v for k, v in rank.items() if isinstance(e, k)), 2))


def compile_proto(proto: str | os.PathLike[str],
                  include: Sequence[str | os.PathLike[str]] = ()) -> descriptor_pool.DescriptorPool:
    """Compile ``proto`` with grpcio-tools' protoc into a descriptor pool (no code generated).

    ``include`` are protoc's ``-I`` dirs for imports; the file's own dir and the
    well-known types come after them.
    """
    path = Path(proto)
    if not path.is_file():
        raise ProtoError(f"--proto {proto}: no such file; check the path")
    try:
        import grpc_tools
    except ModuleNotFoundError:
        raise DevclusterError("--proto needs grpcio-tools; install it with: "
                              "pip install grpcio-tools") from None
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    dirs = [*map(str, include), str(path.absolute().parent), str(well_known)]
    with tempfile.TemporaryDirectory(prefix="devcluster-proto-") as tmp:
        out = Path(tmp) / "set.pb"
        argv = [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{d}" for d in dirs),
                "--include_imports", f"--descriptor_set_out={out}", str(path.absolute())]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              check=False)
        if done.returncode != 0 or not out.exists():
            raise ProtoError(f"--proto {proto} does not compile: {protoc_error(done.stderr)}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


#: Lines protoc's logging (absl) writes before its errors: ``WARNING: All log messages
#: before absl::InitializeLog()...`` and ``W0000 00:00:17... parser.cc:659] ...``.
_PROTOC_LOG = re.compile(r"WARNING: All log messages|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]")
#: A compile error as protoc words it: ``FILE:LINE:COLUMN: what``.
_PROTOC_ERROR = re.compile(r"\S+:\d+:\d+: ")


def protoc_error(stderr: str) -> str:
    """The first line of protoc's ``stderr`` that says what is wrong with the file: a
    ``FILE:LINE:COL:`` error if there is one, never absl's log preamble or a warning.

    >>> protoc_error("WARNING: All log messages before absl::InitializeLog() ...\\n"
    ...              "README.md:1:1: Expected top-level statement.\\n")
    'README.md:1:1: Expected top-level statement.'
    """
    lines = [ln for ln in stderr.strip().splitlines()
             if ln.strip() and not _PROTOC_LOG.match(ln) and "warning:" not in ln]
    located = [ln for ln in lines if _PROTOC_ERROR.match(ln)]
    return (located or lines or ["protoc failed"])[0]


def proto_services(pool: descriptor_pool.DescriptorPool, proto: str | os.PathLike[str],
                   include: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The services the compiled ``proto`` file itself defines (for error messages)."""
    for base in [*map(Path, include), Path(proto).absolute().parent]:
        try:
            name = Path(proto).absolute().relative_to(base.absolute()).as_posix()
            return [s.full_name for s in pool.FindFileByName(name).services_by_name.values()]
        except (ValueError, KeyError):
            continue
    return []
