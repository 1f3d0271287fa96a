"""Control-message files for the generated data (the Morpheus example set, with our paths).

Same file names and shapes as Morpheus's ``control_messages/`` examples: which inputs a file
holds and whether it carries ``batching_options`` follow those files; globs point at the folders
we just wrote, exactly as the user spelled ``out`` (a relative path stays relative and is
resolved against the working directory of whoever runs the message, like Morpheus; an
``s3://`` URL stays an ``s3://`` URL). Every message carries ``file_to_df_options`` because our
files are JSON arrays (``orient=records``), and the ``*_lti`` files carry batching windows with
the real first and last UTC day of each window (a date-only ``end_time`` includes that day).
"""

from __future__ import annotations

from dfp_ray.tools.datagen.config import DatagenConfig

FILE_TO_DF = {"parser_kwargs": {"lines": False, "orient": "records"}}


def _message(
    config: DatagenConfig, source: str, window: str, task: str, data_type: str, batching: bool
) -> dict:
    start, end = (
        (config.train_start, config.train_end)
        if window == "training"
        else (config.infer_start, config.infer_end)
    )
    metadata: dict = {"data_type": data_type}
    if batching:
        metadata["batching_options"] = {
            "period": "D",
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
        }
    metadata["file_to_df_options"] = FILE_TO_DF
    return {
        "tasks": [
            {
                "type": "load",
                "properties": {"loader_id": "fsspec", "files": [f"{config.out}/{source}/{window}/*.json"]},
            },
            {"type": task, "properties": {}},
        ],
        "metadata": metadata,
    }


def control_messages(config: DatagenConfig) -> dict[str, dict]:
    """File name -> document (``{"inputs": [...]}``) for every configured source."""
    docs: dict[str, dict] = {}
    for s in config.sources:

        def train(data_type: str, batching: bool = False, s=s) -> dict:
            return _message(config, s, "training", "training", data_type, batching)

        def infer(data_type: str, batching: bool = False, s=s) -> dict:
            return _message(config, s, "inference", "inference", data_type, batching)

        docs[f"{s}_payload_training.json"] = {"inputs": [train("payload")]}
        docs[f"{s}_payload_inference.json"] = {"inputs": [infer("payload")]}
        docs[f"{s}_payload_load_train_inference.json"] = {"inputs": [train("payload"), infer("payload")]}
        docs[f"{s}_payload_lti.json"] = {"inputs": [train("payload", True), infer("payload", True)]}
        docs[f"{s}_streaming_training.json"] = {"inputs": [train("streaming")]}
        docs[f"{s}_streaming_inference.json"] = {"inputs": [infer("streaming")]}
        docs[f"{s}_streaming_lti.json"] = {"inputs": [train("streaming", True), infer("streaming", True)]}
        if s == "duo":
            # Morpheus ships this mix for Duo only: streaming training, then payload inference.
            docs["duo_streaming_payload.json"] = {"inputs": [train("streaming"), infer("payload")]}
    return docs
