"""``init``: turn an empty folder (or one with a ``.proto``) into a working cluster.

It writes a proto (unless the folder has one: then its first service is used), a
server of that service with health, reflection, the instance header, graceful stop and
(Python) the port hand-over, a Procfile, a ``devcluster.toml`` with the readiness probe
and ``watch``, and a pytest test that uses devcluster's fixture. For ``--lang python``
the proto's modules are generated now (grpcio-tools' protoc); a Node server reads the
proto when it starts. The templates are package data (``devcluster/data/init``).

It never overwrites a file: if any file it would write is there, it writes nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from devcluster.cli.views import Output
from devcluster.errors import DevclusterError, UsageError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)
#: Folders a search for the user's .proto never enters.
_SKIP_DIRS = {"node_modules", "__pycache__", "venv"}
_PROTOS_DIR = "protos"


@dataclass(frozen=True)
class Method:
    """One method of the service, as the templates need it."""

    name: str
    request: tuple[str, str]  # (the .proto file defining the type, its name in that file)
    reply: tuple[str, str]
    unary: bool


@dataclass(frozen=True)
class Service:
    """The service ``init`` builds a cluster around."""

    name: str          # the Procfile's process type
    proto: str         # the .proto, relative to the folder (posix)
    proto_name: str    # its name for protoc (relative to its own folder)
    package: str
    service: str       # the short name: Inventory
    methods: tuple[Method, ...]
    new: bool          # init writes the proto (its Hello method is a real one)

    @property
    def full_service(self) -> str:
        return f"{self.package}.{self.service}" if self.package else self.service

    @property
    def proto_dir(self) -> str:
        return Path(self.proto).parent.as_posix()

    @property
    def proto_glob(self) -> str:
        """The .proto files for ``watch`` (a pattern of the folder's, no ``./``)."""
        return "*.proto" if self.proto_dir == "." else f"{self.proto_dir}/*.proto"

    @property
    def first_unary(self) -> Method | None:
        return next((m for m in self.methods if m.unary), None)


def init(directory: str, lang: str, name: str | None, as_json: bool) -> Output:
    """Write the project's files into ``directory``; exit 1 if any of them is there."""
    if name is not None and not _NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: a service name is letters, digits, '_' and '-', "
                         "starting with a letter (e.g. --name inventory)")
    root = _folder(Path(directory))
    with tempfile.TemporaryDirectory(prefix="devcluster-init-") as tmp:
        service, generated = _service(root, name, lang, Path(tmp))
        files = _render(service, lang, generated)
    there = [path for path in files if (root / path).exists()]
    if there:
        raise DevclusterError(f"init writes nothing: {', '.join(there)} already "
                              f"{'exists' if len(there) == 1 else 'exist'} in {root}; move "
                              f"{'it' if len(there) == 1 else 'them'} away, or init another folder")
    _write(root, files)
    return _answer(directory, root, service, lang, list(files))


def _folder(path: Path) -> Path:
    """The folder to init (made when the files are written, if missing)."""
    if path.exists() and not path.is_dir():
        raise DevclusterError(f"{path} is a file, not a folder; name a folder to init "
                              "(it is made if missing)")
    return path.resolve()


def _write(root: Path, files: Mapping[str, str]) -> None:
    try:
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            with open(root / path, "x", encoding="utf-8") as f:  # "x": never over a file
                f.write(text)
    except OSError as e:
        raise DevclusterError(f"cannot write {e.filename} ({e.strerror}); "
                              "init a folder you can write to") from None


# -- the service: from the folder's .proto, or a new one ------------------------------------

def _service(root: Path, name: str | None, lang: str,
             tmp: Path) -> tuple[Service, dict[str, str]]:
    """The service, and (Python) the modules generated from its proto, by path."""
    found = _find_proto(root)
    new = found is None
    if found is None:
        base = _identifier(name or _name_of_folder(root))
        found = tmp / "src" / _PROTOS_DIR / f"{base}.proto"
        found.parent.mkdir(parents=True)
        found.write_text(_template("common/service.proto.tmpl", package=f"{base}.v1",
                                   service=_camel(base), server=""))
        proto, home = f"{_PROTOS_DIR}/{found.name}", tmp / "src"
    else:
        proto, home = found.relative_to(root).as_posix(), root
    described, generated = _protoc(found, home, tmp / "out", lang == "python")
    service = _describe(described, proto, name, new)
    return service, generated


def _find_proto(root: Path) -> Path | None:
    """The one .proto under ``root`` that defines a service; None when there is none."""
    protos = sorted(_protos(root))
    with_service = [p for p in protos if _SERVICE.search(p.read_text(errors="replace"))]
    if len(with_service) > 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in with_service)
        raise DevclusterError(f"several .proto files define a service ({names}); init builds "
                              "one service: keep one of them here, or init another folder")
    if protos and not with_service:
        names = ", ".join(p.relative_to(root).as_posix() for p in protos)
        raise DevclusterError(f"{names}: no service defined; add one (service X {{ rpc ... }}), "
                              "or init an empty folder")
    return with_service[0] if with_service else None


def _protos(root: Path) -> Iterator[Path]:
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        yield from (Path(top) / f for f in files if f.endswith(".proto"))


def _protoc(proto: Path, home: Path, out: Path, generate: bool) -> tuple[Any, dict[str, str]]:
    """Compile ``proto`` (imports from its folder, then ``home``): its file descriptor and,
    with ``generate``, the Python modules of it and of the local files it imports."""
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool

    out.mkdir(parents=True)
    includes = _includes(proto, home)
    argv = [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{d}" for d in includes),
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}", "--include_imports",
            f"--descriptor_set_out={out / 'set.pb'}", str(proto)]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["protoc failed"]
        first = next((ln for ln in lines if "warning:" not in ln), lines[0])
        raise DevclusterError(f"{proto.name} does not compile: {first}; fix it and init again")
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString((out / "set.pb").read_bytes()).file
    for file in files:
        pool.Add(file)
    described = pool.FindFileByName(files[-1].name)  # the input comes after its imports
    if not generate:
        return described, {}
    local = [path for path in (_on_disk(f.name, includes) for f in files) if path]
    code = out / "code"
    code.mkdir()
    done = subprocess.run([*argv[:-3], f"--python_out={code}", f"--grpc_python_out={code}",
                           *local], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        raise DevclusterError(f"protoc could not generate the modules of {proto.name} "
                              f"({done.stderr.strip() or 'no reason given'}); fix it and init again")
    return described, {p.relative_to(code).as_posix(): p.read_text(encoding="utf-8")
                       for p in sorted(code.rglob("*.py"))}


def _includes(proto: Path, home: Path) -> list[str]:
    return list(dict.fromkeys([str(proto.parent), str(home)]))


def _on_disk(name: str, includes: Sequence[str]) -> str | None:
    """The file a .proto name of protoc's stands for, when it is one of the folder's."""
    return next((str(Path(d) / name) for d in includes if (Path(d) / name).is_file()), None)


def _describe(file: Any, proto: str, name: str | None, new: bool) -> Service:
    """The first service of the compiled ``file``."""
    from google.protobuf import descriptor_pb2

    as_proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(as_proto)
    if not as_proto.service:
        raise DevclusterError(f"{proto}: no service defined; add one, or init an empty folder")
    found = file.services_by_name[as_proto.service[0].name]

    def where(message: Any) -> tuple[str, str]:
        package = message.file.package
        return message.file.name, message.full_name.removeprefix(f"{package}." if package else "")

    methods = tuple(Method(m.name, where(m.input_type), where(m.output_type),
                           not (m.client_streaming or m.server_streaming))
                    for m in found.methods)
    return Service(name or _snake(found.name), proto, file.name, file.package, found.name,
                   methods, new)


# -- names ---------------------------------------------------------------------------------

def _name_of_folder(root: Path) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_")
    return words if _NAME.fullmatch(words) else "service"


def _identifier(name: str) -> str:
    return name.lower().replace("-", "_")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_-]+", name) if part)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _module(proto_file: str) -> str:
    """The Python module protoc generates for a .proto (``a/b-c.proto`` -> ``a.b_c_pb2``)."""
    return proto_file.removesuffix(".proto").replace("-", "_").replace("/", ".") + "_pb2"


# -- the files -------------------------------------------------------------------------------

def _template(path: str, **values: str) -> str:
    text = resources.files("devcluster").joinpath(f"data/init/{path}").read_text("utf-8")
    return string.Template(text).substitute(values)


def _render(service: Service, lang: str, generated: dict[str, str]) -> dict[str, str]:
    """Every file (``generated``: the modules protoc wrote), by relative path."""
    values = {"name": service.name, "service": service.service, "proto": service.proto,
              "full_service": service.full_service, "package": service.package}
    server = "server.py" if lang == "python" else "server.js"
    files: dict[str, str] = {}
    if service.new:
        files[service.proto] = _template("common/service.proto.tmpl", **values, server=server)
    files.update(generated)
    if lang == "python":
        files["server.py"] = _python_server(service, values)
        command, watch = "python server.py --port $PORT", '["*.py"]'
    else:
        files["server.js"] = _node_server(service, values)
        files["package.json"] = _template("node/package.json.tmpl", **values,
                                          package_name=_identifier(service.name).replace("_", "-"))
        command, watch = "node server.js --port $PORT", f'["*.js", "{service.proto_glob}"]'
    files["Procfile"] = _template("common/Procfile.tmpl", **values, command=command)
    files["devcluster.toml"] = _template("common/devcluster.toml.tmpl", **values, watch=watch)
    files[f"test_{_identifier(service.name)}.py"] = _test(service, lang, values)
    return files


def _python_server(service: Service, values: dict[str, str]) -> str:
    module = _module(service.proto_name)
    if service.new:
        methods = _template("python/hello.py.tmpl", module=module)
    else:
        methods = "\n".join(
            _template("python/method.py.tmpl", method=m.name, reply_type=m.reply[1],
                      reply=f"{_module(m.reply[0])}.{m.reply[1]}")
            for m in service.methods if m.unary)
    streaming = [m.name for m in service.methods if not m.unary]
    if streaming:
        methods = (f"    # Streaming, not written yet (they answer UNIMPLEMENTED): "
                   f"{', '.join(streaming)}.\n{methods}")
    if not any(m.unary for m in service.methods):
        methods += "    pass\n"
    imports = sorted({module, f"{module}_grpc", *(_module(m.reply[0]) for m in service.methods)})
    return _template("python/server.py.tmpl", **values, methods=methods, protoc=_protoc_line(service),
                     imports="\n".join(f"import {i}" for i in imports), grpc_module=f"{module}_grpc")


def _protoc_line(service: Service) -> str:
    includes = [f"-I {d}" for d in dict.fromkeys([service.proto_dir, "."])]
    return (f"python -m grpc_tools.protoc {' '.join(includes)} --python_out=. "
            f"--grpc_python_out=. {service.proto}")


def _node_server(service: Service, values: dict[str, str]) -> str:
    if service.new:
        methods = _template("node/hello.js.tmpl")
    else:
        methods = "".join(_template("node/method.js.tmpl", method=m.name, reply_type=m.reply[1])
                          for m in service.methods if m.unary)
    return _template("node/server.js.tmpl", **values, methods=methods.rstrip("\n"),
                     proto_name=service.proto_name, proto_dir=service.proto_dir)


@dataclass(frozen=True)
class _Stubs:
    """How the test gets its stub and messages: ``imports`` and ``setup`` at the top,
    ``stub`` the stub class, ``types`` what names the messages of each .proto."""

    imports: list[str]
    stub: str
    types: dict[str, str]
    setup: tuple[str, ...] = ()

    def message(self, where: tuple[str, str]) -> str:
        return f"{self.types.get(where[0]) or _module(where[0])}.{where[1]}"


def _python_stubs(service: Service) -> _Stubs:
    """Stubs from the modules protoc generated."""
    module = _module(service.proto_name)
    first = service.first_unary
    modules = sorted({f"{module}_grpc", *([_module(first.request[0])] if first else [])})
    return _Stubs(["import pytest", "", *(f"import {m}" for m in modules)],
                  f"{module}_grpc.{service.service}Stub", {})


def _node_stubs(service: Service) -> _Stubs:
    """Stubs from the proto, compiled when the test starts (the Node server has no
    generated Python modules): ``grpc.protos_and_services``."""
    others = {m.request[0] for m in service.methods} - {service.proto_name}
    return _Stubs(["import sys", "from pathlib import Path", "", "import grpc", "import pytest"],
                  f"services.{service.service}Stub",
                  {service.proto_name: "protos", **{f: f'grpc.protos("{f}")' for f in others}},
                  ("", "# The proto's types and stubs, compiled now (it is found on sys.path).",
                   f'sys.path.append(str(Path(__file__).parent / "{service.proto_dir}"))',
                   f'protos, services = grpc.protos_and_services("{service.proto_name}")'))


def _test(service: Service, lang: str, values: dict[str, str]) -> str:
    """The pytest test: every instance answers the first unary method (and a crash costs
    no call); only "every instance serves" when the service has no unary method."""
    stubs = _python_stubs(service) if lang == "python" else _node_stubs(service)
    method = service.first_unary
    if method is None:
        tests = _template("python/serves_test.py.tmpl")
    else:
        stubs.imports.extend(["", "from devcluster.server import INSTANCE_HEADER"])
        args = 'name="test"' if service.new else ""
        tests = _template("python/call_test.py.tmpl", **values, stub=stubs.stub,
                          method=method.name, request=f"{stubs.message(method.request)}({args})")
    return _template("python/test.py.tmpl", **values, tests=tests,
                     imports="\n".join([*stubs.imports, *stubs.setup]))


def _server_file(wrote: Sequence[str]) -> str:
    return next(p for p in wrote if p.startswith("server."))


def _answer(directory: str, root: Path, service: Service, lang: str,
            wrote: Sequence[str]) -> Output:
    here = "" if root == Path.cwd().resolve() else f"cd {shlex.quote(directory)} && "
    up = f"{here}{'npm install && ' if lang == 'node' else ''}devcluster up"
    lines = [f"service {service.full_service} of {service.proto}, served by {_server_file(wrote)} "
             f"as the process type {service.name!r}"]
    lines += [f"wrote {path}" for path in wrote]
    lines.append(f"next: {up}")
    method = service.first_unary
    if method is not None:
        data = '{"name": "you"}' if service.new else "{}"
        lines.append(f"then, in another shell: devcluster call {service.full_service}/"
                     f"{method.name} -d '{data}' -n 4")
    lines.append("tests (on a cluster of their own): python -m pytest")
    if lang == "node":
        lines.append("(`npm install` fetches package.json's @grpc/grpc-js and the rest)")
    return Output({"dir": str(root), "lang": lang, "name": service.name,
                   "service": service.full_service, "proto": service.proto,
                   "wrote": list(wrote), "next": up}, "\n".join(lines))
