"""The sink actor: writes detections (and optionally all scores) durably, each row once per run.

A write returns only after the rows are on disk (fsync) or stored in the object store, and,
when ``kafka_sink.topic`` is set, acknowledged by the Kafka brokers, so the router may treat a
message as done once its sink writes have returned. A write that cannot be made durable raises
:class:`~dfp_ray.durability.DurabilityError` (the message is then run again, never skipped).
The rows arrive already filtered (filter detections runs once, in the user actor that scored
them). Writes are keyed by run: a restarted sink (``ray.max_restarts``) reopens the run's files
and the event ids they hold, so a write retried after a crash adds no duplicate row.

Order of a write with the Kafka sink: the rows the run's detections file does not hold yet are
published to Kafka first, then appended to the file. The file is the record of what is
complete: a crash between the two publishes those rows again on the retry (same key and
``event_id`` header; consumers keep one per event id), and never loses them from the topic.

A *live* run (``live_run_id``, a stream's) is published when the sink starts and appended to
in place afterwards (see :mod:`dfp_ray.pipeline.write_to_file`); the argument is replayed when
Ray restarts the actor, so a restarted sink keeps writing to the live files.
"""

from __future__ import annotations

import logging

import ray

from dfp_ray import metrics
from dfp_ray.config import DFPConfig
from dfp_ray.durability import DurabilityError
from dfp_ray.pipeline.frames import DetectionFrame, ScoredFrame
from dfp_ray.pipeline.serialize import serialize
from dfp_ray.pipeline.write_to_file import RunOutput
from dfp_ray.results import SinkWrite

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class SinkActor:
    def __init__(self, cfg: DFPConfig, live_run_id: str | None = None, user_column: str = "username"):
        self.cfg = cfg
        self.user_column = user_column
        self.runs: dict[str, RunOutput] = {}
        self._kafka = None
        self.live_run_id = live_run_id
        if live_run_id:
            self._run(live_run_id).go_live()

    def _run(self, run_id: str) -> RunOutput:
        if run_id not in self.runs:
            self.runs[run_id] = RunOutput(self.cfg.output, self.cfg.source, run_id, self.cfg.storage_options)
        return self.runs[run_id]

    def _kafka_sink(self):
        """The Kafka detection sink, connected on first use (None without ``kafka_sink.topic``)."""
        if not self.cfg.kafka_sink.topic:
            return None
        if self._kafka is None:
            from dfp_ray.streaming.sink import KafkaDetectionSink

            self._kafka = KafkaDetectionSink.from_config(self.cfg.kafka_sink, kafka=self.cfg.kafka,
                                                         user_column=self.user_column, source=self.cfg.source)
        return self._kafka

    @ray.method(max_task_retries=-1)  # idempotent: rows already in the run's files are skipped
    def write(self, run_id: str, detections: DetectionFrame | None, scores: ScoredFrame | None = None) -> SinkWrite:
        """Write the detections (and every scored row, when all scores are kept) of ``run_id``;
        returns the rows that were new. Raises :class:`DurabilityError` when they could not be
        made durable (disk, object store, Kafka brokers)."""
        run = self._run(run_id)
        written = SinkWrite()
        try:
            if detections is not None and len(detections):
                rows = serialize(detections, self.cfg.output)
                kafka = self._kafka_sink()
                if kafka is not None:
                    new = run.detections.unwritten(rows)
                    if len(new):
                        kafka.publish(new)  # acknowledged by the brokers, or it raises
                written.detections = run.detections.write(rows)
            if run.scores is not None and scores is not None and len(scores):
                written.scores = run.scores.write(serialize(scores, self.cfg.output))
            run.refresh_published()
        except DurabilityError:
            raise
        except Exception as exc:
            raise DurabilityError(f"detections of run {run_id} not written: {type(exc).__name__}: {exc}") from exc
        return metrics.rows_written(written, self.cfg.source)

    def _close_kafka(self) -> None:
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            try:
                kafka.close()
            except Exception as exc:  # noqa: BLE001 - it is being replaced anyway
                log.debug("closing the Kafka sink: %s", exc)

    def publish(self, run_id: str) -> dict[str, str | None]:
        """Switch the published files to this run's (atomically); see :class:`RunOutput`."""
        paths = self._run(run_id).publish()
        self.runs.pop(run_id, None)
        return paths

    def rows(self, run_id: str) -> SinkWrite:
        """Rows durably in the run's files so far (counted from the files after a restart)."""
        run = self._run(run_id)
        return SinkWrite(detections=run.detections.rows_written,
                         scores=run.scores.rows_written if run.scores is not None else 0)

    def live_paths(self) -> dict[str, str | None]:
        """The published paths of the live run (where a stream's rows can be watched)."""
        if not self.live_run_id:
            return {}
        return self._run(self.live_run_id).published_paths()

    def close(self) -> None:
        """Flush and close the Kafka producer (before the actor is killed)."""
        self._close_kafka()
