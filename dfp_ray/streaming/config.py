"""Kafka settings for the streaming service: one pydantic model, the one place for their defaults.

The first six fields are Morpheus's ``ControlMessageKafkaSourceStage`` options with the same
meanings (bootstrap servers, input topics, group id, poll interval, disable commit, disable
pre-filtering); the rest say how this service handles what Morpheus leaves open: where bad
messages go, how long to wait for a broker that is down, how big a control message may be.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MessageKind = Literal["training", "inference", "load_only", "label"]
DataType = Literal["payload", "streaming"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|millis|milliseconds?|s|sec|seconds?|m|min|minutes?|h|hours?)?\s*$")
_UNIT_SECONDS = {
    None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 0.001, "millis": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
}


def parse_duration(text: str | float | int) -> float:
    """A duration such as ``1s``, ``500ms``, ``10millis``, ``2m`` or a bare number of seconds -> seconds.

    >>> parse_duration("500ms"), parse_duration("10millis"), parse_duration("1s"), parse_duration(2)
    (0.5, 0.01, 1.0, 2.0)
    """
    if isinstance(text, bool):
        raise ValueError("a duration must be a number of seconds or text such as '1s' or '500ms'")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).lower())
        if not match:
            raise ValueError(f"{text!r} is not a duration: use e.g. '1s', '500ms', '10millis', '2m'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration {text!r} must not be negative")
    return seconds


class KafkaConfig(BaseModel):
    """Where control messages come from, and how the Kafka source behaves."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Morpheus's ControlMessageKafkaSourceStage options.
    bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated HOST:PORT list of Kafka brokers to bootstrap from."
    )
    input_topics: list[str] = Field(
        default_factory=list, description="Topics to read control messages from (at least one to stream)."
    )
    group_id: str = Field(
        "dfp_ray", description="Consumer group: committed offsets are kept per group, so a restarted "
        "service with the same group resumes where it stopped."
    )
    client_id: str | None = Field(None, description="Client id shown in broker logs and metrics.")
    poll_interval: str = Field(
        "1s", description="How long one poll waits for a new message when the topics are idle (e.g. '1s', "
        "'500ms'). A waiting message is returned at once; this only bounds how often an idle source "
        "checks for a stop request and refreshes its progress line."
    )
    disable_commit: bool = Field(
        False, description="Never commit offsets (debugging: every restart re-reads the same messages)."
    )
    disable_pre_filtering: bool = Field(
        False, description="Hand every valid message to the pipeline, ignoring accept_kinds / "
        "accept_data_types."
    )
    # Pre-filtering (the control-message filter step) applied before messages reach the pipeline.
    accept_kinds: list[MessageKind] | None = Field(
        None, description="Pre-filter: message kinds this deployment handles (None = all). Others are "
        "skipped (logged, committed), not dead-lettered: they are valid, just not for this deployment."
    )
    accept_data_types: list[DataType] | None = Field(
        None, description="Pre-filter: data types this deployment handles (None = all)."
    )
    # What Morpheus leaves open.
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group with no committed offset starts: 'earliest' runs control "
        "messages that were published before the service first started; 'latest' skips them."
    )
    stop_after: int = Field(
        0, ge=0, description="Stop after this many Kafka messages were processed and committed (0 = run "
        "until stopped)."
    )
    dead_letter_topic: str = Field(
        "{topic}.dlq", description="Topic for invalid messages; '{topic}' is the input topic they came from."
    )
    create_topics: bool = Field(
        True, description="Create missing input and dead-letter topics (1 partition) on connect."
    )
    max_message_bytes: int = Field(
        1_048_576, ge=64, description="Larger control messages are dead-lettered unparsed."
    )
    max_json_depth: int = Field(
        32, ge=4, description="More deeply nested control messages are dead-lettered unparsed."
    )
    on_handler_error: Literal["stop", "dead-letter"] = Field(
        "stop", description="When processing a message keeps failing (after handler_attempts): 'stop' "
        "leaves its offset uncommitted and stops the source (a restart retries it); 'dead-letter' sends "
        "it to the dead-letter topic with the error and moves on."
    )
    handler_attempts: int = Field(
        3, ge=1, description="Times a failing message is tried before on_handler_error applies."
    )
    retry_backoff_initial: str = Field(
        "500ms", description="First wait after a failure (broker unreachable, handler error); doubles "
        "after each further failure."
    )
    retry_backoff_max: str = Field("30s", description="Longest wait between retries.")
    request_timeout: str = Field(
        "10s", description="How long one broker request (commit, dead-letter send, lag probe) may take "
        "before the broker counts as unreachable."
    )
    session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer-group session timeout. Joining a group takes about half "
        "of it; a crashed consumer's partitions move to another member after it."
    )
    heartbeat_interval_ms: int = Field(1000, ge=100, description="Consumer heartbeat interval.")
    fetch_max_wait_ms: int = Field(
        100, ge=1, le=30_000, description="Longest time the broker may hold one fetch request while it has "
        "no new message. A broker that answers a held fetch as soon as a message arrives (Apache Kafka) "
        "makes this only the rate of idle requests (10/s at 100: ~1.5% of a core); one that answers "
        "later (Tansu) adds up to about half of it to a message's latency: with Kafka's default, 500, "
        "0.10 s p50 / 0.22 s p99 from publish to the handler, against 0.03 / 0.05 s at 100."
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="The source keeps polling (with its partitions paused) while a "
        "message is being processed, so a long training message does not drop it out of the group."
    )
    progress_interval: str = Field(
        "10s", description="How often a progress line is logged when not on a terminal."
    )

    @field_validator("poll_interval", "retry_backoff_initial", "retry_backoff_max", "request_timeout",
                     "progress_interval")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("input_topics")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        for topic in value:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic or ""):
                raise ValueError(
                    f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; up to 249)"
                )
        if len(set(value)) != len(value):
            raise ValueError("an input topic is listed twice")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("give at least one broker as HOST:PORT")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not HOST:PORT (e.g. 127.0.0.1:9092)")
        return ",".join(servers)

    @model_validator(mode="after")
    def _check_dead_letters(self) -> KafkaConfig:
        for topic in self.input_topics:
            if self.dead_letter_topic_for(topic) in self.input_topics:
                raise ValueError(f"dead_letter_topic for {topic!r} is an input topic: dead letters would be "
                                 "read again; use another name, e.g. '{topic}.dlq'")
        if parse_duration(self.retry_backoff_initial) > parse_duration(self.retry_backoff_max):
            raise ValueError("retry_backoff_initial must not exceed retry_backoff_max")
        if self.fetch_max_wait_ms >= self.request_timeout_s * 1000:
            raise ValueError("fetch_max_wait_ms must be below request_timeout")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self

    # Derived values, in the units the client wants.
    @property
    def servers(self) -> list[str]:
        return self.bootstrap_servers.split(",")

    @property
    def poll_interval_s(self) -> float:
        return parse_duration(self.poll_interval)

    @property
    def backoff_initial_s(self) -> float:
        return parse_duration(self.retry_backoff_initial)

    @property
    def backoff_max_s(self) -> float:
        return parse_duration(self.retry_backoff_max)

    @property
    def request_timeout_s(self) -> float:
        return parse_duration(self.request_timeout)

    @property
    def progress_interval_s(self) -> float:
        return parse_duration(self.progress_interval)

    def dead_letter_topic_for(self, topic: str) -> str:
        """The dead-letter topic of an input topic (``{topic}.dlq`` by default)."""
        return self.dead_letter_topic.replace("{topic}", topic)

    def filter_sets(self) -> tuple[set[str] | None, set[str] | None]:
        """(kinds, data_types) for the control-message filter; (None, None) when pre-filtering is off."""
        if self.disable_pre_filtering:
            return None, None
        kinds = set(self.accept_kinds) if self.accept_kinds is not None else None
        data_types = set(self.accept_data_types) if self.accept_data_types is not None else None
        return kinds, data_types


class KafkaSinkConfig(BaseModel):
    """Where detections are published, besides files (off when ``topic`` is None)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    bootstrap_servers: str | None = Field(
        None, description="Brokers for the detections topic; None = the source's bootstrap_servers."
    )
    topic: str | None = Field(None, description="Topic detections are published to (None = no Kafka sink).")
    create_topic: bool = Field(True, description="Create the topic (1 partition) when it is missing.")
    flush_timeout: str = Field(
        "30s", description="How long a publish may wait for every row to be acknowledged by all replicas."
    )

    @field_validator("flush_timeout")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def flush_timeout_s(self) -> float:
        return parse_duration(self.flush_timeout)
