from sessiongate.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_OK: _ClassVar[ReplyStatus]
    REPLY_INVALID_ARGUMENT: _ClassVar[ReplyStatus]
    REPLY_FAILED: _ClassVar[ReplyStatus]
    REPLY_TOO_LARGE: _ClassVar[ReplyStatus]
REPLY_OK: ReplyStatus
REPLY_INVALID_ARGUMENT: ReplyStatus
REPLY_FAILED: ReplyStatus
REPLY_TOO_LARGE: ReplyStatus

class WorkerFrame(_message.Message):
    __slots__ = ("hello", "welcome", "ready", "command", "reply", "events", "heartbeat", "shutdown", "adopt", "history", "credit")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    ADOPT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    welcome: Welcome
    ready: Ready
    command: Command
    reply: Reply
    events: EventBatch
    heartbeat: Heartbeat
    shutdown: Shutdown
    adopt: Adopt
    history: History
    credit: Credit
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ..., events: _Optional[_Union[EventBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., adopt: _Optional[_Union[Adopt, _Mapping]] = ..., history: _Optional[_Union[History, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "session_id", "nonce", "pid", "backend")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: str
    nonce: bytes
    pid: int
    backend: str
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., pid: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "max_frame_bytes", "credit", "next_nonce")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    NEXT_NONCE_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    max_frame_bytes: int
    credit: Credit
    next_nonce: bytes
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., next_nonce: _Optional[bytes] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("paced", "through_count")
    PACED_FIELD_NUMBER: _ClassVar[int]
    THROUGH_COUNT_FIELD_NUMBER: _ClassVar[int]
    paced: bool
    through_count: int
    def __init__(self, paced: _Optional[bool] = ..., through_count: _Optional[int] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Command(_message.Message):
    __slots__ = ("request_id", "command", "payload", "timeout_ms", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    command: str
    payload: bytes
    timeout_ms: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[int] = ..., command: _Optional[str] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("request_id", "status", "payload", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    status: ReplyStatus
    payload: bytes
    error: str
    def __init__(self, request_id: _Optional[int] = ..., status: _Optional[_Union[ReplyStatus, str]] = ..., payload: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events", "overrun")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.Event]
    overrun: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_gateway_pb2.Event, _Mapping]]] = ..., overrun: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Adopt(_message.Message):
    __slots__ = ("protocol_version", "session_id", "nonce", "pid", "last_sequence", "dropped_events", "backend")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: str
    nonce: bytes
    pid: int
    last_sequence: int
    dropped_events: int
    backend: str
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., pid: _Optional[int] = ..., last_sequence: _Optional[int] = ..., dropped_events: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class History(_message.Message):
    __slots__ = ("events", "first_unsent")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNSENT_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.Event]
    first_unsent: int
    def __init__(self, events: _Optional[_Iterable[_Union[_gateway_pb2.Event, _Mapping]]] = ..., first_unsent: _Optional[int] = ...) -> None: ...

class RawEventFrame(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: RawEventBatch
    def __init__(self, events: _Optional[_Union[RawEventBatch, _Mapping]] = ...) -> None: ...

class RawEventBatch(_message.Message):
    __slots__ = ("events", "overrun")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedScalarFieldContainer[bytes]
    overrun: bool
    def __init__(self, events: _Optional[_Iterable[bytes]] = ..., overrun: _Optional[bool] = ...) -> None: ...
