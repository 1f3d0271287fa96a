"""The Kafka control-message source (Morpheus's ``ControlMessageKafkaSourceStage``), crash-safe.

It reads one Kafka message at a time, turns its value (a control-message document) into
control messages, dead-letters what is invalid, hands the rest to a handler and commits the
message's offset only after the handler returned. The handler returns only once everything
the messages caused is durable, so:

- a crash at any point (before, during or after the handler; before or after the commit)
  means the message is delivered again after the restart, from the last committed offset;
- a message whose offset was committed is never delivered again to the same group.

Delivery to the handler is therefore at least once; with outputs that are idempotent (keyed
by event id and message id, which are the same on every redelivery) the effect is exactly
once. Control messages are handled one at a time, in partition order.

Failures and what happens:

- invalid message (bad JSON, unknown task, mixed tasks, no files, too large, too deep): each
  rejected input goes to the dead-letter topic with the reason and the original
  topic/partition/offset in headers (:mod:`~dfp_ray.streaming.dead_letters`); the valid
  inputs of the same document still run; the offset is committed once both are done.
- the handler raises :class:`RejectMessage`, or returns rejections: dead-lettered (stage
  ``pipeline``), then committed.
- the handler raises anything else: tried again (``handler_attempts`` in all, with backoff);
  still failing, ``on_handler_error`` decides: ``stop`` (default) leaves the offset uncommitted
  and stops the source with exit code 1, so a restart (after the cause is fixed) retries it;
  ``dead-letter`` sends it to the dead-letter topic with the error and moves on.
- brokers unreachable (at start or later): retried with capped exponential backoff, one log
  line per state change (``kafka unreachable`` / ``kafka connected`` / ``kafka lost`` /
  ``kafka back``); consumption resumes where it stopped.
- SIGINT / SIGTERM: the message in flight is finished and committed, then the source stops
  (exit code 0). A second signal stops at once without committing it (it is redelivered).

While the handler runs (on a worker thread) the main thread keeps polling with the
partitions paused, so a long training message does not make the consumer leave its group,
signals are answered and the progress line keeps moving.

Why over ~400 lines: one consumer's state machine (poll, hand over, commit, dead-letter, back
off, stop on a signal) whose steps share the consumer and its offsets; split, each part would
need all of them.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kafka import ConsumerRebalanceListener

from dfp_ray.messages import ControlMessage, Rejection
from dfp_ray.streaming.backoff import Backoff, BrokerState
from dfp_ray.streaming.config import KafkaConfig
from dfp_ray.streaming.dead_letters import KafkaDeadLetters, Stage
from dfp_ray.streaming.progress import ProgressDisplay, StreamStats
from dfp_ray.streaming.validation import check_value

log = logging.getLogger("dfp_ray.streaming")


@dataclass(frozen=True)
class MessageOrigin:
    """Where a batch of control messages came from: one Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int | None = None

    @property
    def id(self) -> str:
        """``kafka:<topic>/<partition>@<offset>``: stable across redeliveries (message ids start with it)."""
        return f"kafka:{self.topic}/{self.partition}@{self.offset}"


@dataclass
class HandleResult:
    """What the handler reports back: counts for the progress line, and inputs it refused.

    ``rejections`` (e.g. ``Rejection.for_message(msg, "no files match ...")``) are sent to the
    dead-letter topic, stage ``pipeline``, before the offset is committed.
    """

    events: int = 0
    detections: int = 0
    rejections: list[Rejection] = field(default_factory=list)


@runtime_checkable
class MessageHandler(Protocol):
    """Processes the control messages of one Kafka message.

    Called once per Kafka message that holds at least one valid (and, with pre-filtering,
    accepted) control message; ``messages`` are in document order; calls never overlap and
    follow partition order. Must return only once everything the messages caused is durable
    (detections written, models registered, state checkpointed): the offset is committed
    right after. May be called again with the same ``origin`` (and the same message ids)
    after a crash or a rebalance, so its outputs must be idempotent. Runs on a worker thread.
    """

    def handle(self, messages: list[ControlMessage], origin: MessageOrigin) -> HandleResult | None: ...


HandlerLike = MessageHandler | Callable[[list[ControlMessage], MessageOrigin], "HandleResult | None"]


class RejectMessage(Exception):  # noqa: N818 - it is an outcome, not a failure of the source
    """Raised by a handler for a message that can never succeed: dead-lettered with ``reason``, not retried."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


class _Stop(Exception):
    """Internal: a stop was requested while waiting for the brokers."""


def _is_unreachable(exc: BaseException) -> bool:
    from kafka.errors import KafkaError

    return isinstance(exc, OSError) or (isinstance(exc, KafkaError) and getattr(exc, "retriable", False))


def _is_rebalanced(exc: BaseException) -> bool:
    from kafka import errors

    kinds = tuple(
        getattr(errors, name) for name in (
            "CommitFailedError", "RebalanceInProgressError", "UnknownMemberIdError",
            "IllegalGenerationError", "FencedInstanceIdError",
        ) if hasattr(errors, name)
    )
    return isinstance(exc, kinds)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


class KafkaControlSource:
    """Consume control messages from Kafka, hand them to ``handler``, commit when it returns.

    ``run()`` blocks until stopped (signal, :meth:`stop`, ``stop_after``, or a handler failure
    with ``on_handler_error="stop"``) and returns the :class:`StreamStats` (``exit_code``).
    """

    def __init__(self, config: KafkaConfig, handler: HandlerLike, *, progress: ProgressDisplay | None = None,
                 handle_signals: bool = True):
        if not config.input_topics:
            raise ValueError("no input topic: give at least one (--input-topic / kafka.input_topics)")
        self.cfg = config
        self._handle = handler.handle if isinstance(handler, MessageHandler) else handler
        self.progress = progress or ProgressDisplay(interval_s=config.progress_interval_s)
        self.handle_signals = handle_signals
        self.stats = StreamStats()
        self.broker = BrokerState(config.bootstrap_servers)
        self._stop = threading.Event()
        #: Set once the consumer group has assigned this source its partitions (cleared when they
        #: are revoked): from then on a published message is read within one fetch. Joining takes
        #: the broker's rebalance wait (about 3 s with Tansu and session_timeout_ms=6000; Apache
        #: Kafka's group.initial.rebalance.delay.ms is 3 s too), so benchmarks and tests that time
        #: messages wait for it.
        self.assigned = threading.Event()
        self._force = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self._dead: KafkaDeadLetters | None = None
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._timeout_s = config.request_timeout_s
        self._last_probe = 0.0
        self._lags: dict[Any, int] = {}

    # ----------------------------------------------------------------- control
    def stop(self, reason: str = "stopped") -> None:
        """Ask the source to stop after the message in flight (thread-safe)."""
        if not self._stop.is_set():
            self.stats.stop_reason = self.stats.stop_reason or reason
            self._stop.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            self.progress.clear()
            log.warning("%s again: stopping now; the message in flight stays uncommitted and will be "
                        "delivered again", name)
            self.stats.stop_reason = "forced"
            self._force.set()
            return
        self.progress.clear()
        log.info("%s: finishing the message in flight, committing, then stopping", name)
        self.stop("signal")

    # --------------------------------------------------------------------- run
    def run(self) -> StreamStats:
        from dfp_ray.streaming.clients import quiet_client_logs

        quiet_client_logs()
        previous: dict[int, Any] = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        self.stats.state = "connecting"
        try:
            self._connect()
            while not self._stop.is_set():
                if self.cfg.stop_after and self.stats.committed >= self.cfg.stop_after:
                    self.stop("stop_after")
                    break
                record = self._next_record()
                if record is not None and not self._process(record):
                    break
                self._refresh()
        except _Stop:
            pass
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stats.state = "stopped"
            self.stats.stop_reason = self.stats.stop_reason or "stopped"
            self.progress.close(self.stats)
        return self.stats

    # -------------------------------------------------------------- connecting
    def _retry(self, what: str, action: Callable[[], Any], *, in_flight: bool) -> Any:
        """Run ``action`` until it succeeds, waiting with backoff while the brokers are unreachable.

        Not ``in_flight`` (connecting): a stop request ends the wait at once. ``in_flight`` (a
        dead-letter send for the message being finished): after a stop request it keeps trying
        for one more request timeout, then gives up (the message stays uncommitted)."""
        deadline: float | None = None
        while True:
            if self._force.is_set() or (self._stop.is_set() and not in_flight):
                raise _Stop
            try:
                result = action()
            except Exception as exc:
                if not _is_unreachable(exc):
                    raise
                self.broker.failed(f"{what}: {_describe(exc)}", self.cfg.backoff_max_s)
                self._sync_state()
                if self._stop.is_set() and in_flight:
                    deadline = deadline or time.monotonic() + self._timeout_s
                    if time.monotonic() >= deadline:
                        raise _Stop from None
                self._wait_to_retry(in_flight, deadline)
                continue
            self._backoff.reset()
            return result

    def _wait_to_retry(self, in_flight: bool, deadline: float | None) -> None:
        """The next backoff delay; shorter when stopping (never past ``deadline``); a forced stop
        (or, when nothing is in flight, any stop) ends it at once."""
        delay = self._backoff.next_delay()
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        (self._force if in_flight else self._stop).wait(delay)

    def _connect(self) -> None:
        from kafka import KafkaConsumer

        from dfp_ray.streaming.clients import close_producer, ensure_topics, make_producer

        cfg = self.cfg
        timeout_ms = int(self._timeout_s * 1000)
        dead_topics = {t: cfg.dead_letter_topic_for(t) for t in cfg.input_topics}

        def connect() -> None:
            if not self._tcp_reachable():
                raise ConnectionRefusedError("no bootstrap server accepts connections")
            if cfg.create_topics:
                ensure_topics(cfg.servers, [*cfg.input_topics, *dead_topics.values()], timeout_s=self._timeout_s)
            # Room for the largest value a dead letter copies, plus its headers.
            producer = make_producer(cfg.servers, timeout_s=self._timeout_s, client_id=cfg.client_id,
                                     max_request_size=max(1_048_576, cfg.max_message_bytes + 65_536))
            consumer_kwargs: dict[str, Any] = dict(
                bootstrap_servers=cfg.servers, group_id=cfg.group_id, enable_auto_commit=False,
                auto_offset_reset=cfg.auto_offset_reset, max_poll_records=1, fetch_max_wait_ms=cfg.fetch_max_wait_ms,
                session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_poll_interval_ms=cfg.max_poll_interval_ms, request_timeout_ms=max(timeout_ms, 1000),
                bootstrap_timeout_ms=timeout_ms, reconnect_backoff_max_ms=2000,
                allow_auto_create_topics=False,  # created above with one partition, or by the operator
            )
            if cfg.client_id:
                consumer_kwargs["client_id"] = cfg.client_id
            try:
                consumer = KafkaConsumer(**consumer_kwargs)
            except Exception:
                close_producer(producer, 1.0)
                raise
            consumer.subscribe(cfg.input_topics, listener=_AssignmentLog(self))
            self._producer, self._consumer = producer, consumer

        self._retry("connecting", connect, in_flight=False)
        self._dead = KafkaDeadLetters(self._producer, dead_topics, cfg.dead_letter_topic, self._timeout_s,
                                      cfg.max_message_bytes)
        self.broker.ok(f"topics={','.join(cfg.input_topics)} group={cfg.group_id}")
        self._sync_state()

    def _sync_state(self) -> None:
        state = "connected" if self.broker.connected else (
            "reconnecting" if self.broker.ever_connected else "connecting")
        changed = state != self.stats.state
        self.stats.state = state
        self.stats.outages = self.broker.outages
        self.progress.update(self.stats, force=changed and self.progress.tty)

    def _tcp_reachable(self) -> bool:
        """Does any bootstrap server accept a TCP connection? (Fails fast where the client would
        wait a whole request timeout for a broker that is not there.)"""
        for server in self.cfg.servers:
            host, _, port = server.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=min(self._timeout_s, 2.0)).close()
                return True
            except OSError:
                continue
        return False

    def _probe(self) -> bool:
        """Do the brokers answer? (TCP to a bootstrap server, then the assigned partitions' end
        offsets, which also give the lag.) Updates the broker state; never raises."""
        if not self._tcp_reachable():
            self.broker.failed("no bootstrap server accepts connections", self.cfg.backoff_max_s)
            self._sync_state()
            return False
        assigned = list(self._consumer.assignment() or [])
        if assigned:
            try:
                ends = self._consumer.end_offsets(assigned, timeout_ms=int(self._timeout_s * 1000))
                lags = {}
                for tp in assigned:
                    position = self._consumer.position(tp, timeout_ms=int(self._timeout_s * 1000))
                    if position is not None and ends.get(tp) is not None:
                        lags[tp] = max(0, ends[tp] - position)
                self._lags = lags
                self.stats.lag = sum(lags.values())
            except Exception as exc:
                if not _is_unreachable(exc):
                    log.debug("lag probe failed: %s", _describe(exc))
                    return self.broker.connected
                self.broker.failed(f"listing offsets: {_describe(exc)}", self.cfg.backoff_max_s)
                self._sync_state()
                return False
        self.broker.ok()
        self._sync_state()
        return True

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_probe >= max(2.0, self.cfg.poll_interval_s):
            self._last_probe = now
            self._probe()
        self.progress.update(self.stats)

    # ----------------------------------------------------------------- polling
    def _next_record(self) -> Any:
        """One record, or None after waiting up to the poll interval (or a backoff while the
        brokers are down)."""
        if not self.broker.connected:
            self._backoff.wait(self._stop)
            if self._stop.is_set() or not self._probe():
                return None
            self._backoff.reset()
        try:
            batches = self._consumer.poll(timeout_ms=int(self.cfg.poll_interval_s * 1000), max_records=1)
        except Exception as exc:
            if not _is_unreachable(exc):
                raise
            self.broker.failed(f"polling: {_describe(exc)}", self.cfg.backoff_max_s)
            self._sync_state()
            return None
        for records in batches.values():
            if records:
                return records[0]
        return None

    # -------------------------------------------------------------- processing
    def _process(self, record: Any) -> bool:
        """Validate, dead-letter, handle, commit one record. False = stop the source now."""
        cfg = self.cfg
        origin = MessageOrigin(record.topic, record.partition, record.offset, record.key,
                               record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None)
        self.stats.consumed += 1
        self.stats.in_flight, self.stats.in_flight_since = origin.id, time.monotonic()
        kinds, data_types = cfg.filter_sets()
        checked = check_value(record.value, origin.id, max_bytes=cfg.max_message_bytes,
                              max_depth=cfg.max_json_depth, kinds=kinds, data_types=data_types)
        try:
            for rejection in checked.rejections:
                log.warning("dead-lettering %s", rejection)
            self._dead_letter(checked.rejections, origin, record.value, "parse")
            for message in checked.skipped:
                log.info("skipping %s (%s, %s): not accepted by this deployment's pre-filter",
                         message.message_id, message.kind, message.data_type)
            self.stats.skipped += len(checked.skipped)
            if checked.messages:
                log.info("handling %s: %s", origin.id,
                         ", ".join(f"{m.kind}/{m.data_type}" for m in checked.messages))
                if not self._handle_with_retries(checked.messages, origin, record.value):
                    return False
        except _Stop:
            self._left_uncommitted(origin)
            return False
        return self._commit(record, origin)

    def _dead_letter(self, rejections: list[Rejection], origin: MessageOrigin, value: bytes | None,
                     stage: Stage) -> None:
        if not rejections:
            return
        dead = self._dead
        assert dead is not None
        sent = self._retry("sending to the dead-letter topic",
                           lambda: dead.send(rejections, origin, value, stage=stage), in_flight=True)
        self.stats.dead_lettered += sent
        self.broker.ok()

    def _handle_with_retries(self, messages: list[ControlMessage], origin: MessageOrigin,
                             value: bytes | None) -> bool:
        attempts = self.cfg.handler_attempts
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        for attempt in range(1, attempts + 1):
            outcome, error = self._run_handler(messages, origin)
            if self._force.is_set():
                raise _Stop
            if error is None:
                result = outcome if isinstance(outcome, HandleResult) else HandleResult()
                self.stats.messages += len(messages)
                self.stats.events += int(result.events)
                self.stats.detections += int(result.detections)
                if result.rejections:
                    for rejection in result.rejections:
                        log.warning("dead-lettering (refused by the pipeline) %s", rejection)
                    self._dead_letter(result.rejections, origin, value, "pipeline")
                return True
            if isinstance(error, RejectMessage):
                log.warning("dead-lettering %s: rejected by the handler: %s", origin.id, error.reason)
                rejections = [Rejection(message_id=m.message_id, field=error.field, reason=error.reason,
                                        raw=m.model_dump(mode="json", exclude={"message_id"})) for m in messages]
                self._dead_letter(rejections, origin, value, "pipeline")
                self.stats.messages += len(messages)
                return True
            self.stats.handler_errors += 1
            if attempt < attempts:
                delay = backoff.next_delay()
                log.warning("processing %s failed (attempt %d of %d): %s; retrying in %.1fs",
                            origin.id, attempt, attempts, _describe(error), delay)
                # Stopping meanwhile: no further attempt; the message stays uncommitted (redelivered).
                if self._stop.is_set() or self._stop.wait(delay):
                    raise _Stop
                continue
            log.error("processing %s failed %d time(s): %s", origin.id, attempts, _describe(error),
                      exc_info=(type(error), error, error.__traceback__))
            if self.cfg.on_handler_error == "dead-letter":
                reason = f"processing failed {attempts} time(s): {_describe(error)}"
                rejections = [Rejection(message_id=m.message_id, reason=reason,
                                        raw=m.model_dump(mode="json", exclude={"message_id"})) for m in messages]
                self._dead_letter(rejections, origin, value, "handler")
                return True
            log.error("stopping without committing %s (on_handler_error=stop): fix the cause and start "
                      "again; the message will be processed again from there", origin.id)
            self.stats.stop_reason = "handler_failed"
            self._left_uncommitted(origin)
            self._stop.set()
            return False
        return False  # pragma: no cover - the loop always returns

    def _run_handler(self, messages: list[ControlMessage], origin: MessageOrigin) -> tuple[Any, BaseException | None]:
        """Run the handler on a worker thread; keep the consumer alive (paused polls) meanwhile."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self._handle(messages, origin)
            except BaseException as exc:  # reported to the main thread
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"dfp-handler-{origin.offset}", daemon=True)
        tick = min(0.5, max(0.05, self.cfg.poll_interval_s))
        worker.start()
        worker.join(timeout=tick)
        if not worker.is_alive():  # a quick message: the consumer was never idle long enough to matter
            return box.get("result"), box.get("error")
        # A long one: pause the partitions (pausing drops what the client prefetched, so only now)
        # and keep polling, which keeps the consumer in its group.
        consumer = self._consumer
        paused = list(consumer.assignment() or [])
        consumer.pause(*paused)
        try:
            while worker.is_alive():
                if self._force.is_set():
                    return None, None
                self._keep_alive()
                self._refresh()  # broker state and lag stay current during a long message
                worker.join(timeout=tick)
            if self._force.is_set():
                return None, None
        finally:
            try:
                consumer.resume(*[tp for tp in paused if tp in (consumer.assignment() or set())])
            except Exception as exc:  # a rebalance took them; nothing to resume
                log.debug("resume after handler: %s", _describe(exc))
        return box.get("result"), box.get("error")

    def _keep_alive(self) -> None:
        """Poll with everything paused (stays in the group); records that arrive from partitions
        assigned meanwhile are put back (seek) and paused too."""
        consumer = self._consumer
        try:
            batches = consumer.poll(timeout_ms=0, max_records=1)
        except Exception as exc:
            log.debug("poll while handling: %s", _describe(exc))
            return
        if batches:
            for tp, records in batches.items():
                if records:
                    consumer.seek(tp, records[0].offset)
            consumer.pause(*list(consumer.assignment() or []))

    # ----------------------------------------------------------------- commits
    def _commit(self, record: Any, origin: MessageOrigin) -> bool:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.stats.in_flight = None
        if self.cfg.disable_commit:
            self.stats.committed += 1
            return True
        tp = TopicPartition(record.topic, record.partition)
        epoch = getattr(record, "leader_epoch", None)
        offsets = {tp: OffsetAndMetadata(record.offset + 1, "", -1 if epoch is None else epoch)}
        deadline = None
        while True:
            try:
                self._consumer.commit(offsets, timeout_ms=int(self._timeout_s * 1000))
            except Exception as exc:
                if _is_rebalanced(exc):
                    log.warning("could not commit %s: the group rebalanced (%s); it will be delivered again "
                                "to the partition's new owner (its outputs are idempotent)", origin.id,
                                _describe(exc))
                    return True
                if not _is_unreachable(exc):
                    raise
                self.broker.failed(f"committing: {_describe(exc)}", self.cfg.backoff_max_s)
                self._sync_state()
                if self._force.is_set():
                    self._left_uncommitted(origin)
                    return False
                if self._stop.is_set():
                    # Stopping: keep trying for one request timeout more, then give up (redelivered later).
                    deadline = deadline or time.monotonic() + self._timeout_s
                    if time.monotonic() >= deadline:
                        self._left_uncommitted(origin)
                        return False
                self._wait_to_retry(True, deadline)
                continue
            self._backoff.reset()
            self.broker.ok()
            self._sync_state()
            self.stats.committed += 1
            self._note_lag(tp, record.offset + 1)
            log.debug("committed %s", origin.id)
            return True

    def _note_lag(self, tp: Any, next_offset: int) -> None:
        """Lag of one partition from the last known high-water mark (no request)."""
        try:
            highwater = self._consumer.highwater(tp)
        except Exception:  # no longer assigned
            return
        if highwater is not None:
            self._lags[tp] = max(0, highwater - next_offset)
            self.stats.lag = sum(self._lags.values())

    def _left_uncommitted(self, origin: MessageOrigin) -> None:
        self.stats.in_flight = None
        if not self.cfg.disable_commit:
            self.stats.uncommitted = origin.id
            log.warning("%s left uncommitted: it will be delivered again when the source restarts", origin.id)

    def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=int(self._timeout_s * 1000))
            except Exception as exc:
                log.debug("closing the consumer: %s", _describe(exc))
        if producer is not None:
            from dfp_ray.streaming.clients import close_producer

            close_producer(producer, self._timeout_s)


class _AssignmentLog(ConsumerRebalanceListener):
    """Logs partition assignment changes (one line each) and refreshes the lag soon after."""

    def __init__(self, source: KafkaControlSource):
        self.source = source
        self.warned: set[str] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source.assigned.clear()
        if revoked:
            log.info("partitions revoked: %s", _partitions(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", _partitions(assigned) or "none")
        if assigned:
            self.source.assigned.set()
        self.source._last_probe = 0.0
        consumer = self.source._consumer
        for topic in sorted({tp.topic for tp in assigned}):
            count = len(consumer.partitions_for_topic(topic) or ()) if consumer is not None else 0
            if count > 1 and topic not in self.warned:
                self.warned.add(topic)
                log.warning("topic %s has %d partitions: control messages are handled in publish order only "
                            "within a partition; use a single-partition topic when order matters (training "
                            "before inference)", topic, count)

    def on_partitions_lost(self, lost: Any) -> None:
        self.source.assigned.clear()
        if lost:
            log.warning("partitions lost: %s", _partitions(lost))


def _partitions(tps: Any) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps))
