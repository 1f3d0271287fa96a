"""Reading raw log files: one file (:mod:`.raw_files`), flattening nested JSON (:mod:`.flatten`), the frame cache (:mod:`.frame_cache`)."""
