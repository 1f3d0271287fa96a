"""Control messages: the JSON unit of work the router consumes, parsed and validated.

A control-message document (a file, or one Kafka payload) is either ``{"inputs": [msg, ...]}``
(Morpheus's file format), a single message ``{"tasks": [...], "metadata": {...}}``, or a JSON
list of messages. Each message names files to load (``load`` tasks with fsspec globs) and what
to do with them (``training`` or ``inference``), plus how to batch and parse those files; or
carries analyst verdicts on earlier detections (a ``label`` task, no files).

Why a strict parser: a typo in a control message (``"trainig"``, ``"peroid"``) used to be
silently ignored or to crash a pipeline stage far from its cause. Here every message is
validated up front; a bad one becomes a :class:`Rejection` that names the message
(``duo_payload_lti.json#inputs[1]``) and the field path (``inputs[1].tasks[1].type``) and says
what to do. The other messages of the same document still run; rejections are appended to a
dead-letter file (:class:`~dfp_ray.messages.dead_letters.DeadLetterWriter`) so nothing is lost silently.

Run ``python -m dfp_ray.messages FILE...`` to check message files without running anything.
"""

from dfp_ray.messages.dead_letters import DeadLetterWriter
from dfp_ray.messages.model import (
    BatchingOptions,
    ControlMessage,
    FileToDfOptions,
    InferenceTask,
    LabelProperties,
    LabelTask,
    LoadProperties,
    LoadTask,
    MessageMetadata,
    ParseResult,
    Rejection,
    Task,
    TaskType,
    TrainingTask,
    Verdict,
)
from dfp_ray.messages.parser import parse_control_messages
from dfp_ray.messages.periods import PeriodSpec, parse_period

__all__ = [
    "BatchingOptions",
    "ControlMessage",
    "DeadLetterWriter",
    "FileToDfOptions",
    "InferenceTask",
    "LabelProperties",
    "LabelTask",
    "LoadProperties",
    "LoadTask",
    "MessageMetadata",
    "ParseResult",
    "PeriodSpec",
    "Rejection",
    "Task",
    "TaskType",
    "TrainingTask",
    "Verdict",
    "parse_control_messages",
    "parse_period",
]
