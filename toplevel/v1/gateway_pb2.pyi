import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    OPENING: _ClassVar[SessionState]
    READY: _ClassVar[SessionState]
    DETACHED: _ClassVar[SessionState]
    CLOSING: _ClassVar[SessionState]
    CLOSED: _ClassVar[SessionState]
    FAULTED: _ClassVar[SessionState]

class GapReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GAP_REASON_UNSPECIFIED: _ClassVar[GapReason]
    EVICTED: _ClassVar[GapReason]
    EXPIRED: _ClassVar[GapReason]
    GATEWAY_RESTARTED: _ClassVar[GapReason]
    WORKER_DISCONNECTED: _ClassVar[GapReason]
    SLOW_SUBSCRIBER: _ClassVar[GapReason]
    WORKER_OVERRUN: _ClassVar[GapReason]

class OverflowPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERFLOW_POLICY_UNSET: _ClassVar[OverflowPolicy]
    DISCONNECT: _ClassVar[OverflowPolicy]
    SKIP: _ClassVar[OverflowPolicy]
SESSION_STATE_UNSPECIFIED: SessionState
OPENING: SessionState
READY: SessionState
DETACHED: SessionState
CLOSING: SessionState
CLOSED: SessionState
FAULTED: SessionState
GAP_REASON_UNSPECIFIED: GapReason
EVICTED: GapReason
EXPIRED: GapReason
GATEWAY_RESTARTED: GapReason
WORKER_DISCONNECTED: GapReason
SLOW_SUBSCRIBER: GapReason
WORKER_OVERRUN: GapReason
OVERFLOW_POLICY_UNSET: OverflowPolicy
DISCONNECT: OverflowPolicy
SKIP: OverflowPolicy

class OpenSessionRequest(_message.Message):
    __slots__ = ("client_name", "backend", "tag", "lease_seconds")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    backend: str
    tag: str
    lease_seconds: int
    def __init__(self, client_name: _Optional[str] = ..., backend: _Optional[str] = ..., tag: _Optional[str] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "state", "owner_key_id", "tag", "backend", "client_name", "last_sequence", "subscriber_count", "opened_at", "lease_expires_at", "reason", "node")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    owner_key_id: str
    tag: str
    backend: str
    client_name: str
    last_sequence: int
    subscriber_count: int
    opened_at: _timestamp_pb2.Timestamp
    lease_expires_at: _timestamp_pb2.Timestamp
    reason: str
    node: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., owner_key_id: _Optional[str] = ..., tag: _Optional[str] = ..., backend: _Optional[str] = ..., client_name: _Optional[str] = ..., last_sequence: _Optional[int] = ..., subscriber_count: _Optional[int] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("session_id", "command", "payload", "timeout_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    command: str
    payload: bytes
    timeout_ms: int
    def __init__(self, session_id: _Optional[str] = ..., command: _Optional[str] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("token", "expires_at", "admin", "tags", "token_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    admin: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    token_id: str
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., admin: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., token_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "kind", "payload", "time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: str
    payload: bytes
    time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[str] = ..., payload: _Optional[bytes] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplayGap(_message.Message):
    __slots__ = ("requested_after", "oldest_available", "reason")
    REQUESTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    requested_after: int
    oldest_available: int
    reason: GapReason
    def __init__(self, requested_after: _Optional[int] = ..., oldest_available: _Optional[int] = ..., reason: _Optional[_Union[GapReason, str]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("session_id", "after_sequence", "subscriber_id", "max_batch", "on_overflow")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    ON_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_sequence: int
    subscriber_id: str
    max_batch: int
    on_overflow: OverflowPolicy
    def __init__(self, session_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., subscriber_id: _Optional[str] = ..., max_batch: _Optional[int] = ..., on_overflow: _Optional[_Union[OverflowPolicy, str]] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("events", "gap", "caught_up")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    gap: ReplayGap
    caught_up: bool
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., gap: _Optional[_Union[ReplayGap, _Mapping]] = ..., caught_up: _Optional[bool] = ...) -> None: ...
