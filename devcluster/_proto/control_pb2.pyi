from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Instance(_message.Message):
    __slots__ = ("name", "service", "state", "pid", "address", "weight", "enabled", "restarts", "started_at", "cpu_percent", "rss_bytes", "uss_bytes", "last_exit", "process_type", "port", "metadata", "ready", "fault")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    USS_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_TYPE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    state: str
    pid: int
    address: str
    weight: int
    enabled: bool
    restarts: int
    started_at: float
    cpu_percent: float
    rss_bytes: int
    uss_bytes: int
    last_exit: str
    process_type: str
    port: int
    metadata: _containers.ScalarMap[str, str]
    ready: str
    fault: str
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ..., enabled: _Optional[bool] = ..., restarts: _Optional[int] = ..., started_at: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., uss_bytes: _Optional[int] = ..., last_exit: _Optional[str] = ..., process_type: _Optional[str] = ..., port: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ready: _Optional[str] = ..., fault: _Optional[str] = ...) -> None: ...

class PsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PsReply(_message.Message):
    __slots__ = ("instances", "supervisor_pid", "procfile", "state_dir")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_PID_FIELD_NUMBER: _ClassVar[int]
    PROCFILE_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    supervisor_pid: int
    procfile: str
    state_dir: str
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., supervisor_pid: _Optional[int] = ..., procfile: _Optional[str] = ..., state_dir: _Optional[str] = ...) -> None: ...

class DownRequest(_message.Message):
    __slots__ = ("grace", "who")
    GRACE_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    grace: float
    who: str
    def __init__(self, grace: _Optional[float] = ..., who: _Optional[str] = ...) -> None: ...

class DownReply(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class ActionRequest(_message.Message):
    __slots__ = ("names", "all", "signal", "wait", "timeout", "who")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    signal: str
    wait: bool
    timeout: float
    who: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., signal: _Optional[str] = ..., wait: _Optional[bool] = ..., timeout: _Optional[float] = ..., who: _Optional[str] = ...) -> None: ...

class ActionReply(_message.Message):
    __slots__ = ("instances", "unchanged")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., unchanged: _Optional[_Iterable[str]] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("counts", "wait", "timeout", "who")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.ScalarMap[str, int]
    wait: bool
    timeout: float
    who: str
    def __init__(self, counts: _Optional[_Mapping[str, int]] = ..., wait: _Optional[bool] = ..., timeout: _Optional[float] = ..., who: _Optional[str] = ...) -> None: ...

class WaitReadyRequest(_message.Message):
    __slots__ = ("timeout",)
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    timeout: float
    def __init__(self, timeout: _Optional[float] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("names", "all", "who")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    who: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., who: _Optional[str] = ...) -> None: ...

class ReloadStep(_message.Message):
    __slots__ = ("name", "old_pid", "new_pid", "old_address", "new_address", "same_port", "ready_ms", "total_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_PID_FIELD_NUMBER: _ClassVar[int]
    NEW_PID_FIELD_NUMBER: _ClassVar[int]
    OLD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NEW_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SAME_PORT_FIELD_NUMBER: _ClassVar[int]
    READY_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    old_pid: int
    new_pid: int
    old_address: str
    new_address: str
    same_port: bool
    ready_ms: float
    total_ms: float
    def __init__(self, name: _Optional[str] = ..., old_pid: _Optional[int] = ..., new_pid: _Optional[int] = ..., old_address: _Optional[str] = ..., new_address: _Optional[str] = ..., same_port: _Optional[bool] = ..., ready_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ReloadResult(_message.Message):
    __slots__ = ("reloaded", "started", "stopped", "unchanged", "failed", "error", "usage_error", "log", "instances")
    RELOADED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USAGE_ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    reloaded: _containers.RepeatedCompositeFieldContainer[ReloadStep]
    started: _containers.RepeatedScalarFieldContainer[str]
    stopped: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    failed: str
    error: str
    usage_error: bool
    log: _containers.RepeatedScalarFieldContainer[str]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, reloaded: _Optional[_Iterable[_Union[ReloadStep, _Mapping]]] = ..., started: _Optional[_Iterable[str]] = ..., stopped: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., failed: _Optional[str] = ..., error: _Optional[str] = ..., usage_error: _Optional[bool] = ..., log: _Optional[_Iterable[str]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class ReloadEvent(_message.Message):
    __slots__ = ("kind", "instance", "text", "result")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    instance: str
    text: str
    result: ReloadResult
    def __init__(self, kind: _Optional[str] = ..., instance: _Optional[str] = ..., text: _Optional[str] = ..., result: _Optional[_Union[ReloadResult, _Mapping]] = ...) -> None: ...
