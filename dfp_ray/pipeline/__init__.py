"""The DFP pipeline's steps, one module each, named as Morpheus names them.

Data flows one way::

    control messages (file, Kafka)
      -> control_message_filter  keep the messages this deployment handles
      -> fsspec_loader           expand globs (local, s3://) into files with batch times
      -> file_batcher            keep files in the window, sample, group by period
      -> file_to_df              read + map with the source schema (cached)     [on a loader actor]
      -> split_users             rows of each user to the actor that owns it      [loader -> owner]
      -> rolling_window          streaming: accumulate, emit when due             [owner]
      -> data_prep               per-user-per-day counters, feature dtypes        [owner]
      -> training                fit the autoencoder                              [owner]
      -> mlflow_model_writer     register a new version                           [owner]
      -> inference               score with the user's model, else the generic    [owner]
      -> filter_detections       keep rows past the threshold                     [owner]
      -> post_processing         event_time, model_version                        [owner]
      -> serialize               choose columns, times as ISO-8601                [sink]
      -> write_to_file           durable CSV / JSON lines                         [sink]

Each step is a pure function (or a small class) over the frame types of :mod:`.frames`. The
actors (:mod:`dfp_ray.actors`) call them through the Ray-free controllers
(:mod:`dfp_ray.controllers`); nothing else computes a step. docs/pipeline.md has the table
Morpheus step -> module:function.
"""

STEPS: tuple[tuple[str, str], ...] = (
    ("FilterControlMessage", "dfp_ray.pipeline.control_message_filter:filter_messages"),
    ("fsspec loader", "dfp_ray.pipeline.fsspec_loader:expand_globs"),
    ("FileBatcher", "dfp_ray.pipeline.file_batcher:plan_batches"),
    ("FileToDF", "dfp_ray.pipeline.file_to_df:read_and_map"),
    ("DFPSplitUsers", "dfp_ray.pipeline.split_users:split_by_owner"),
    ("DFPRollingWindow", "dfp_ray.pipeline.rolling_window:RollingWindow"),
    ("DFPDataPrep", "dfp_ray.pipeline.data_prep:prepare_features"),
    ("DFPTraining", "dfp_ray.pipeline.training:train_model"),
    ("MLFlowModelWriter", "dfp_ray.pipeline.mlflow_model_writer:write_model"),
    ("DFPInference", "dfp_ray.pipeline.inference:score_users"),
    ("FilterDetections", "dfp_ray.pipeline.filter_detections:filter_detections"),
    ("DFPPostprocessing", "dfp_ray.pipeline.post_processing:add_postprocessing"),
    ("Serialize", "dfp_ray.pipeline.serialize:serialize"),
    ("WriteToFile", "dfp_ray.pipeline.write_to_file:TableWriter"),
)
"""Every step: (Morpheus's name, ``module:function``), in pipeline order. The one place they
are named; docs/pipeline.md's table and a test are checked against it."""
