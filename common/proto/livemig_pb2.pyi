from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TimeoutStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMEOUT_STRATEGY_CANCEL: _ClassVar[TimeoutStrategy]
    TIMEOUT_STRATEGY_FORCE: _ClassVar[TimeoutStrategy]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]
    COMPRESSION_LZ4: _ClassVar[Compression]

class MigrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_STATE_UNSPECIFIED: _ClassVar[MigrationState]
    PENDING: _ClassVar[MigrationState]
    RUNNING: _ClassVar[MigrationState]
    COMPLETED: _ClassVar[MigrationState]
    FAILED: _ClassVar[MigrationState]
    CANCELLED: _ClassVar[MigrationState]
TIMEOUT_STRATEGY_CANCEL: TimeoutStrategy
TIMEOUT_STRATEGY_FORCE: TimeoutStrategy
COMPRESSION_NONE: Compression
COMPRESSION_ZSTD: Compression
COMPRESSION_LZ4: Compression
MIGRATION_STATE_UNSPECIFIED: MigrationState
PENDING: MigrationState
RUNNING: MigrationState
COMPLETED: MigrationState
FAILED: MigrationState
CANCELLED: MigrationState

class MemoryRange(_message.Message):
    __slots__ = ("gpa", "length")
    GPA_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    gpa: int
    length: int
    def __init__(self, gpa: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class MemoryRangeTable(_message.Message):
    __slots__ = ("ranges",)
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[MemoryRange]
    def __init__(self, ranges: _Optional[_Iterable[_Union[MemoryRange, _Mapping]]] = ...) -> None: ...

class GuestMemoryRegion(_message.Message):
    __slots__ = ("gpa", "path", "dirty_log")
    GPA_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIRTY_LOG_FIELD_NUMBER: _ClassVar[int]
    gpa: int
    path: str
    dirty_log: str
    def __init__(self, gpa: _Optional[int] = ..., path: _Optional[str] = ..., dirty_log: _Optional[str] = ...) -> None: ...

class StartMigrationRequest(_message.Message):
    __slots__ = ("destination", "regions", "connections", "skip_zero_pages", "page_size", "verify", "max_batch_bytes", "downtime_ms", "timeout_ms", "timeout_strategy", "max_iterations", "guest_pid", "available_bandwidth_bytes_per_second", "qmp_socket", "auto_converge", "stall_timeout_ms", "compression", "max_bandwidth_bytes_per_second")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIP_ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    GUEST_PID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QMP_SOCKET_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    destination: str
    regions: _containers.RepeatedCompositeFieldContainer[GuestMemoryRegion]
    connections: int
    skip_zero_pages: bool
    page_size: int
    verify: bool
    max_batch_bytes: int
    downtime_ms: int
    timeout_ms: int
    timeout_strategy: TimeoutStrategy
    max_iterations: int
    guest_pid: int
    available_bandwidth_bytes_per_second: float
    qmp_socket: str
    auto_converge: bool
    stall_timeout_ms: int
    compression: Compression
    max_bandwidth_bytes_per_second: float
    def __init__(self, destination: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[GuestMemoryRegion, _Mapping]]] = ..., connections: _Optional[int] = ..., skip_zero_pages: _Optional[bool] = ..., page_size: _Optional[int] = ..., verify: _Optional[bool] = ..., max_batch_bytes: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., timeout_strategy: _Optional[_Union[TimeoutStrategy, str]] = ..., max_iterations: _Optional[int] = ..., guest_pid: _Optional[int] = ..., available_bandwidth_bytes_per_second: _Optional[float] = ..., qmp_socket: _Optional[str] = ..., auto_converge: _Optional[bool] = ..., stall_timeout_ms: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., max_bandwidth_bytes_per_second: _Optional[float] = ...) -> None: ...

class MigrationLimits(_message.Message):
    __slots__ = ("migration_id", "downtime_ms", "max_bandwidth_bytes_per_second", "max_iterations")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    downtime_ms: int
    max_bandwidth_bytes_per_second: float
    max_iterations: int
    def __init__(self, migration_id: _Optional[str] = ..., downtime_ms: _Optional[int] = ..., max_bandwidth_bytes_per_second: _Optional[float] = ..., max_iterations: _Optional[int] = ...) -> None: ...

class StartMigrationResponse(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class MigrationRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[MigrationStatus]
    def __init__(self, migrations: _Optional[_Iterable[_Union[MigrationStatus, _Mapping]]] = ...) -> None: ...

class MigrationStats(_message.Message):
    __slots__ = ("total_bytes", "scanned_bytes", "zero_bytes", "zero_pages", "normal_pages", "transmitted_bytes", "wire_bytes", "throughput_bytes_per_second", "duration_ms", "verified", "batches", "processed_bytes", "transfer_ms", "connections", "iterations", "remaining_bytes", "dirty_rate_bytes_per_second", "expected_downtime_ms", "downtime_ms", "setup_ms", "bandwidth_bytes_per_second", "bandwidth_source", "verify_ms", "zeroed_bytes", "throttle_percent", "iteration_processed_bytes", "compressed_raw_bytes", "compressed_bytes", "lowest_compression_level", "highest_compression_level")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCANNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZERO_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    NORMAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    TRANSMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_RATE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    SETUP_MS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    ZEROED_BYTES_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ITERATION_PROCESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOWEST_COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    scanned_bytes: int
    zero_bytes: int
    zero_pages: int
    normal_pages: int
    transmitted_bytes: int
    wire_bytes: int
    throughput_bytes_per_second: float
    duration_ms: int
    verified: bool
    batches: int
    processed_bytes: int
    transfer_ms: int
    connections: int
    iterations: int
    remaining_bytes: int
    dirty_rate_bytes_per_second: float
    expected_downtime_ms: int
    downtime_ms: int
    setup_ms: int
    bandwidth_bytes_per_second: float
    bandwidth_source: str
    verify_ms: int
    zeroed_bytes: int
    throttle_percent: int
    iteration_processed_bytes: int
    compressed_raw_bytes: int
    compressed_bytes: int
    lowest_compression_level: int
    highest_compression_level: int
    def __init__(self, total_bytes: _Optional[int] = ..., scanned_bytes: _Optional[int] = ..., zero_bytes: _Optional[int] = ..., zero_pages: _Optional[int] = ..., normal_pages: _Optional[int] = ..., transmitted_bytes: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., throughput_bytes_per_second: _Optional[float] = ..., duration_ms: _Optional[int] = ..., verified: _Optional[bool] = ..., batches: _Optional[int] = ..., processed_bytes: _Optional[int] = ..., transfer_ms: _Optional[int] = ..., connections: _Optional[int] = ..., iterations: _Optional[int] = ..., remaining_bytes: _Optional[int] = ..., dirty_rate_bytes_per_second: _Optional[float] = ..., expected_downtime_ms: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., setup_ms: _Optional[int] = ..., bandwidth_bytes_per_second: _Optional[float] = ..., bandwidth_source: _Optional[str] = ..., verify_ms: _Optional[int] = ..., zeroed_bytes: _Optional[int] = ..., throttle_percent: _Optional[int] = ..., iteration_processed_bytes: _Optional[int] = ..., compressed_raw_bytes: _Optional[int] = ..., compressed_bytes: _Optional[int] = ..., lowest_compression_level: _Optional[int] = ..., highest_compression_level: _Optional[int] = ...) -> None: ...

class IterationStats(_message.Message):
    __slots__ = ("iteration", "dirty_bytes", "dirty_pages", "scanned_bytes", "zero_bytes", "zero_pages", "normal_pages", "transmitted_bytes", "wire_bytes", "duration_ms", "wire_bandwidth_bytes_per_second", "dirty_rate_bytes_per_second", "remaining_bytes", "expected_downtime_ms", "zeroed_bytes", "final")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_PAGES_FIELD_NUMBER: _ClassVar[int]
    SCANNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZERO_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    NORMAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    TRANSMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    WIRE_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DIRTY_RATE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    ZEROED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    dirty_bytes: int
    dirty_pages: int
    scanned_bytes: int
    zero_bytes: int
    zero_pages: int
    normal_pages: int
    transmitted_bytes: int
    wire_bytes: int
    duration_ms: int
    wire_bandwidth_bytes_per_second: float
    dirty_rate_bytes_per_second: float
    remaining_bytes: int
    expected_downtime_ms: int
    zeroed_bytes: int
    final: bool
    def __init__(self, iteration: _Optional[int] = ..., dirty_bytes: _Optional[int] = ..., dirty_pages: _Optional[int] = ..., scanned_bytes: _Optional[int] = ..., zero_bytes: _Optional[int] = ..., zero_pages: _Optional[int] = ..., normal_pages: _Optional[int] = ..., transmitted_bytes: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., duration_ms: _Optional[int] = ..., wire_bandwidth_bytes_per_second: _Optional[float] = ..., dirty_rate_bytes_per_second: _Optional[float] = ..., remaining_bytes: _Optional[int] = ..., expected_downtime_ms: _Optional[int] = ..., zeroed_bytes: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class DestinationRegion(_message.Message):
    __slots__ = ("gpa", "length", "path")
    GPA_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    gpa: int
    length: int
    path: str
    def __init__(self, gpa: _Optional[int] = ..., length: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class MigrationStatus(_message.Message):
    __slots__ = ("migration_id", "state", "error", "stats", "destination_regions", "destination", "skip_zero_pages", "page_size", "iterations", "phase", "live", "guest_state", "guest_run_state", "convergence_forecast", "downtime_limit_ms", "max_bandwidth_bytes_per_second", "max_iterations", "compression")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGIONS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SKIP_ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    GUEST_STATE_FIELD_NUMBER: _ClassVar[int]
    GUEST_RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    CONVERGENCE_FORECAST_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_LIMIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    state: MigrationState
    error: str
    stats: MigrationStats
    destination_regions: _containers.RepeatedCompositeFieldContainer[DestinationRegion]
    destination: str
    skip_zero_pages: bool
    page_size: int
    iterations: _containers.RepeatedCompositeFieldContainer[IterationStats]
    phase: str
    live: bool
    guest_state: str
    guest_run_state: str
    convergence_forecast: str
    downtime_limit_ms: int
    max_bandwidth_bytes_per_second: float
    max_iterations: int
    compression: Compression
    def __init__(self, migration_id: _Optional[str] = ..., state: _Optional[_Union[MigrationState, str]] = ..., error: _Optional[str] = ..., stats: _Optional[_Union[MigrationStats, _Mapping]] = ..., destination_regions: _Optional[_Iterable[_Union[DestinationRegion, _Mapping]]] = ..., destination: _Optional[str] = ..., skip_zero_pages: _Optional[bool] = ..., page_size: _Optional[int] = ..., iterations: _Optional[_Iterable[_Union[IterationStats, _Mapping]]] = ..., phase: _Optional[str] = ..., live: _Optional[bool] = ..., guest_state: _Optional[str] = ..., guest_run_state: _Optional[str] = ..., convergence_forecast: _Optional[str] = ..., downtime_limit_ms: _Optional[int] = ..., max_bandwidth_bytes_per_second: _Optional[float] = ..., max_iterations: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ...) -> None: ...

class MigrationCheck(_message.Message):
    __slots__ = ("problems", "total_bytes", "send_bytes", "zero_bytes", "bandwidth_bytes_per_second", "bandwidth_source", "forecast_ms", "receiver_max_batch_bytes", "receiver_data_ports")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEND_BYTES_FIELD_NUMBER: _ClassVar[int]
    ZERO_BYTES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FORECAST_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_DATA_PORTS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedScalarFieldContainer[str]
    total_bytes: int
    send_bytes: int
    zero_bytes: int
    bandwidth_bytes_per_second: float
    bandwidth_source: str
    forecast_ms: int
    receiver_max_batch_bytes: int
    receiver_data_ports: int
    def __init__(self, problems: _Optional[_Iterable[str]] = ..., total_bytes: _Optional[int] = ..., send_bytes: _Optional[int] = ..., zero_bytes: _Optional[int] = ..., bandwidth_bytes_per_second: _Optional[float] = ..., bandwidth_source: _Optional[str] = ..., forecast_ms: _Optional[int] = ..., receiver_max_batch_bytes: _Optional[int] = ..., receiver_data_ports: _Optional[int] = ...) -> None: ...

class PrepareMigrationRequest(_message.Message):
    __slots__ = ("layout", "page_size", "migration_id", "connections")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    layout: MemoryRangeTable
    page_size: int
    migration_id: str
    connections: int
    def __init__(self, layout: _Optional[_Union[MemoryRangeTable, _Mapping]] = ..., page_size: _Optional[int] = ..., migration_id: _Optional[str] = ..., connections: _Optional[int] = ...) -> None: ...

class PrepareMigrationResponse(_message.Message):
    __slots__ = ("session_token", "destination_regions", "max_batch_bytes", "data_ports", "idle_timeout_ms")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_PORTS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    destination_regions: _containers.RepeatedCompositeFieldContainer[DestinationRegion]
    max_batch_bytes: int
    data_ports: _containers.RepeatedScalarFieldContainer[int]
    idle_timeout_ms: int
    def __init__(self, session_token: _Optional[str] = ..., destination_regions: _Optional[_Iterable[_Union[DestinationRegion, _Mapping]]] = ..., max_batch_bytes: _Optional[int] = ..., data_ports: _Optional[_Iterable[int]] = ..., idle_timeout_ms: _Optional[int] = ...) -> None: ...

class PageBatch(_message.Message):
    __slots__ = ("session_token", "batch_id", "ranges", "zero_ranges", "padding", "attempt", "settled_below", "compression", "raw_length", "data")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ZERO_RANGES_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SETTLED_BELOW_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    batch_id: int
    ranges: bytes
    zero_ranges: bytes
    padding: bytes
    attempt: int
    settled_below: int
    compression: Compression
    raw_length: int
    data: bytes
    def __init__(self, session_token: _Optional[str] = ..., batch_id: _Optional[int] = ..., ranges: _Optional[bytes] = ..., zero_ranges: _Optional[bytes] = ..., padding: _Optional[bytes] = ..., attempt: _Optional[int] = ..., settled_below: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., raw_length: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PageBatchAck(_message.Message):
    __slots__ = ("batch_id", "bytes_written")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    bytes_written: int
    def __init__(self, batch_id: _Optional[int] = ..., bytes_written: _Optional[int] = ...) -> None: ...

class CompleteMigrationRequest(_message.Message):
    __slots__ = ("session_token", "transmitted_bytes", "batches", "digest")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRANSMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    transmitted_bytes: int
    batches: int
    digest: bytes
    def __init__(self, session_token: _Optional[str] = ..., transmitted_bytes: _Optional[int] = ..., batches: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class CompleteMigrationResponse(_message.Message):
    __slots__ = ("verified", "written_bytes", "allocated_bytes")
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    verified: bool
    written_bytes: int
    allocated_bytes: int
    def __init__(self, verified: _Optional[bool] = ..., written_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ...) -> None: ...

class AbortMigrationRequest(_message.Message):
    __slots__ = ("session_token", "reason")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    reason: str
    def __init__(self, session_token: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortMigrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
